"""Run a detector or segmentor on one image and save the drawn result.

    python demo/image_demo.py IMAGE CONFIG CHECKPOINT --out-file result.jpg

Uses MMDetection's DetInferencer or MMSegmentation's MMSegInferencer. The checkpoint must fit the
config's model and hold finite weights, as for tools/test.py (``--partial-load`` loads only what
fits, on purpose); a re-parameterized one is used with the backbone in its deploy structure.
"""

import argparse
import os.path as osp

import mmcv
from mmengine.config import DictAction
from mmengine.logging import print_log

from mmunirep.utils import (
    atomic_write,
    check_finite,
    clear_pretrained,
    framework_of,
    load_model_weights,
    model_state_dict,
    prepare_cfg,
    read_checkpoint,
)
from mmunirep.utils.checkpoint import follow_checkpoint_structure

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Draw a UniRepLKNet model's predictions")
    parser.add_argument('image', help='image file')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out-file', required=True, help='where to save the drawing')
    parser.add_argument('--device', default='cpu', help='e.g. cpu or cuda:0')
    parser.add_argument('--score-thr', type=float, default=0.3, help='detections: score threshold')
    parser.add_argument(
        '--partial-load',
        action='store_true',
        help="load only the checkpoint's tensors that fit the model",
    )
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='as in tools/test.py')
    args = parser.parse_args(argv)
    if not args.out_file.lower().endswith(IMAGE_EXTENSIONS):
        parser.error(
            f'--out-file takes an image file name ({", ".join(IMAGE_EXTENSIONS)}), '
            f'got {args.out_file!r}'
        )
    return args


def main(argv=None):
    args = parse_args(argv)
    for path, what in ((args.image, 'image'), (args.checkpoint, 'checkpoint')):
        # a checkpoint URL is the inferencer's (mmengine's checkpoint loader's) to fetch
        if not (what == 'checkpoint' and '://' in path) and not osp.isfile(path):
            raise FileNotFoundError(f'{what} not found: {path!r}')
    cfg = prepare_cfg(args.config, cfg_options=args.cfg_options)
    clear_pretrained(cfg)  # the checkpoint holds every weight
    ckpt = read_checkpoint(args.checkpoint)
    check_finite(model_state_dict(ckpt, args.checkpoint), args.checkpoint)
    follow_checkpoint_structure(cfg, ckpt, args.checkpoint)
    if framework_of(cfg) == 'mmdet':
        from mmdet.apis import DetInferencer

        inferencer = DetInferencer(
            model=cfg, weights=args.checkpoint, device=args.device, show_progress=False
        )
    else:
        from mmseg.apis import MMSegInferencer

        inferencer = MMSegInferencer(model=cfg, weights=args.checkpoint, device=args.device)
    # the inferencers load non-strictly: the checkpoint is checked and loaded again, strictly
    load_model_weights(
        inferencer.model,
        ckpt,
        source=args.checkpoint,
        partial=args.partial_load,
        cfg_hint='--cfg-options model.backbone.',
        partial_flag='--partial-load',
    )
    if framework_of(cfg) == 'mmdet':
        result = inferencer(
            args.image,
            return_vis=True,
            no_save_vis=True,
            no_save_pred=True,
            pred_score_thr=args.score_thr,
        )
    else:
        result = inferencer(args.image, return_vis=True, show=False)
    vis = result['visualization']  # RGB; a list of one for DetInferencer
    vis = vis[0] if isinstance(vis, (list, tuple)) else vis
    with atomic_write(args.out_file) as tmp:
        if not mmcv.imwrite(vis[..., ::-1], tmp):
            raise OSError(f'could not write {args.out_file}')
    print_log(f'saved {args.out_file}', logger='current')


if __name__ == '__main__':
    main()
