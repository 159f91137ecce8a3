"""Run a detector or segmentor on one image and save the drawn result.

    python tools/image_demo.py IMAGE CONFIG CHECKPOINT --out-file result.jpg

Uses MMDetection's DetInferencer or MMSegmentation's MMSegInferencer.
"""
import argparse
import os
import os.path as osp

import mmcv
from mmengine.logging import print_log

from mmunirep.utils import framework_of, prepare_cfg
from mmunirep.utils.config_utils import DictAction


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Draw a UniRepLKNet model\'s predictions')
    parser.add_argument('image', help='image file')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out-file', required=True, help='where to save the drawing')
    parser.add_argument('--device', default='cpu', help='e.g. cpu or cuda:0')
    parser.add_argument('--score-thr', type=float, default=0.3, help='detections: score threshold')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='as in tools/test.py')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    for path, what in ((args.image, 'image'), (args.checkpoint, 'checkpoint')):
        # a checkpoint URL is the inferencer's (mmengine's checkpoint loader's) to fetch
        if not (what == 'checkpoint' and '://' in path) and not osp.isfile(path):
            raise FileNotFoundError(f'{what} not found: {path!r}')
    cfg = prepare_cfg(args.config, cfg_options=args.cfg_options)
    if cfg.model.get('backbone', {}).get('init_cfg') is not None:
        cfg.model.backbone.init_cfg = None  # the checkpoint holds every weight
    if framework_of(cfg) == 'mmdet':
        from mmdet.apis import DetInferencer
        inferencer = DetInferencer(model=cfg, weights=args.checkpoint, device=args.device,
                                   show_progress=False)
        result = inferencer(args.image, return_vis=True, no_save_vis=True, no_save_pred=True,
                            pred_score_thr=args.score_thr)
    else:
        from mmseg.apis import MMSegInferencer
        inferencer = MMSegInferencer(model=cfg, weights=args.checkpoint, device=args.device)
        result = inferencer(args.image, return_vis=True, show=False)
    vis = result['visualization']  # RGB; a list of one for DetInferencer
    vis = vis[0] if isinstance(vis, (list, tuple)) else vis
    os.makedirs(osp.dirname(osp.abspath(args.out_file)), exist_ok=True)
    mmcv.imwrite(vis[..., ::-1], args.out_file)
    print_log(f'saved {args.out_file}', logger='current')


if __name__ == '__main__':
    main()
