"""Evaluate a checkpoint: COCO bbox/segm mAP for detectors, mIoU for segmentors.

    python tools/test.py CONFIG CHECKPOINT [--out results.pkl] [--show-dir DIR] [--tta]
    python tools/test.py SEG_CONFIG CHECKPOINT --out DIR    # label maps as PNGs, as MMSegmentation
"""
import argparse
import os
import os.path as osp

from mmengine.evaluator import DumpResults
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmunirep.utils import (end_distributed_process, framework_of, leave_process_group,
                            prepare_cfg)
from mmunirep.utils.config_utils import DictAction


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test a UniRepLKNet detector or segmentor')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the evaluation log')
    parser.add_argument('--out', help='dump the raw predictions to this pickle file (.pkl); for '
                        'segmentors, a directory instead saves each prediction as a PNG label '
                        'map in the dataset\'s own label values (ADE20K: 1..150, as its '
                        'annotations), as MMSegmentation\'s tools/test.py does')
    parser.add_argument('--show-dir', help='save drawn predictions into this directory')
    parser.add_argument('--tta', action='store_true',
                        help='test-time augmentation (multi-scale + flip, the "ms" of the paper)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. model.backbone.deploy=True')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main(argv=None):
    args = parse_args(argv)
    # a URL (http://, https://, s3://, ...) is mmengine's checkpoint loader's to fetch
    if '://' not in args.checkpoint and not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {args.checkpoint!r}')
    cfg = prepare_cfg(args.config, args.work_dir, args.cfg_options, args.launcher)
    framework = framework_of(cfg)
    cfg.load_from = args.checkpoint
    # the checkpoint provides every weight: do not fetch the backbone's pretrained file
    if cfg.model.get('backbone', {}).get('init_cfg') is not None:
        cfg.model.backbone.init_cfg = None
    if cfg.model.get('pretrained') is not None:  # MMSegmentation's EncoderDecoder(pretrained=)
        cfg.model.pretrained = None
    if cfg.model.get('backbone', {}).get('pretrained') is not None:  # deprecated backbone arg
        cfg.model.backbone.pretrained = None

    if args.show_dir:
        hook = cfg.default_hooks.get('visualization')
        if hook is None:
            raise ValueError('--show-dir needs default_hooks.visualization in the config')
        hook['draw'] = True
        hook['interval'] = 1
        if framework == 'mmdet':
            hook['test_out_dir'] = osp.abspath(args.show_dir)
        else:
            cfg.visualizer['save_dir'] = osp.abspath(args.show_dir)
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            why = ''
            if framework == 'mmdet':  # the detection configs have none, on purpose
                why = (' (the detection configs have none: MMDetection\'s DetTTAModel merges '
                       'boxes but not instance masks, so it cannot serve Cascade Mask R-CNN; the '
                       'paper\'s COCO results are single-scale)')
            raise ValueError(f'--tta needs tta_model and tta_pipeline in the config{why}')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model

    pickle_out = bool(args.out) and args.out.endswith(('.pkl', '.pickle'))
    if args.out and not pickle_out:
        if framework == 'mmdet':
            raise ValueError(f'--out must be a .pkl file for a detector, got {args.out!r}')
        _save_label_maps(cfg, osp.abspath(args.out))
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    if pickle_out:
        if framework == 'mmdet':
            from mmdet.evaluation import DumpDetResults
            runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
        else:
            runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))
    metrics = runner.test()
    leave_process_group()
    return metrics


def _save_label_maps(cfg, out_dir: str) -> None:
    """Have the segmentation metric write each prediction as a PNG label map into ``out_dir``
    (MMSegmentation's IoUMetric does the writing: its ``output_dir``), as ``--out DIR`` of
    MMSegmentation's own tools/test.py."""
    if osp.isfile(out_dir):
        raise ValueError(f'--out: expected a directory for the label maps (or a .pkl file), '
                         f'got the existing file {out_dir!r}')
    evaluators = cfg.test_evaluator
    evaluators = evaluators if isinstance(evaluators, (list, tuple)) else [evaluators]
    iou = [e for e in evaluators if e.get('type') in ('IoUMetric', 'mmseg.IoUMetric')]
    if not iou:
        raise ValueError(f'--out DIR saves label maps through the IoUMetric of test_evaluator; '
                         f'this config has {[e.get("type") for e in evaluators]}')
    for evaluator in iou:
        evaluator['output_dir'] = out_dir


if __name__ == '__main__':
    main()
    end_distributed_process()
