"""Evaluate a checkpoint: COCO bbox/segm mAP for detectors, mIoU for segmentors.

    python tools/test.py CONFIG CHECKPOINT [--out results.pkl] [--show-dir DIR] [--tta]
    python tools/test.py SEG_CONFIG CHECKPOINT --out DIR    # label maps as PNGs, as MMSegmentation

The checkpoint must fit the config's model (every tensor, by name and shape, but for the
differences mmunirep.utils.checkpoint.ALLOWED_DIFFERENCES allows) and hold finite weights;
``--partial-load`` loads only what fits, on purpose. The annotations are checked before the first
image (``--check-data``). Outputs are written whole or not at all.
"""

import argparse
import os
import os.path as osp

from mmengine.config import DictAction
from mmengine.dist import is_main_process
from mmengine.evaluator import DumpResults
from mmengine.model import is_model_wrapper
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmunirep.utils import (
    atomic_directory,
    atomic_write,
    check_finite,
    clear_pretrained,
    end_distributed_process,
    framework_of,
    leave_process_group,
    load_model_weights,
    prepare_cfg,
    read_checkpoint,
)
from mmunirep.utils.checkpoint import follow_checkpoint_structure, model_state_dict
from mmunirep.utils.data_check import CHECK_MODES, check_datasets


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test a UniRepLKNet detector or segmentor')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file or URL')
    parser.add_argument('--work-dir', help='the dir to save the evaluation log')
    parser.add_argument(
        '--out',
        help='dump the raw predictions to this pickle file (.pkl); for '
        'segmentors, a directory instead saves each prediction as a PNG label '
        "map in the dataset's own label values (ADE20K: 1..150, as its "
        "annotations), as MMSegmentation's tools/test.py does",
    )
    parser.add_argument('--show-dir', help='save drawn predictions into this directory')
    parser.add_argument(
        '--tta',
        action='store_true',
        help='test-time augmentation (multi-scale + flip, the "ms" of the paper)',
    )
    parser.add_argument(
        '--partial-load',
        action='store_true',
        help="load only the checkpoint's tensors that fit the model (by name and "
        'shape) and leave the others as initialized, instead of refusing a '
        'checkpoint that does not fit',
    )
    parser.add_argument(
        '--check-data',
        choices=CHECK_MODES,
        default='sample',
        help='check the annotations before testing: COCO files always whole; '
        'label maps a sample (default), all of them (full), or none (off)',
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, e.g. model.backbone.deploy=True',
    )
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher',
    )
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
    ckpt = read_checkpoint(args.checkpoint)
    check_finite(model_state_dict(ckpt, args.checkpoint), args.checkpoint)  # before any output
    follow_checkpoint_structure(cfg, ckpt, args.checkpoint)
    clear_pretrained(cfg)  # the checkpoint provides every weight
    # loaded below, strictly, instead of by the Runner; a config saved by a resumed training
    # says resume=True, which would make the Runner load the work dir's latest checkpoint
    cfg.load_from, cfg.resume = None, False
    check_datasets(cfg, ('test',), args.check_data)

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
                why = (
                    " (the detection configs have none: MMDetection's DetTTAModel merges "
                    'boxes but not instance masks, so it cannot serve Cascade Mask R-CNN; the '
                    "paper's COCO results are single-scale)"
                )
            raise ValueError(f'--tta needs tta_model and tta_pipeline in the config{why}')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model

    pickle_out = bool(args.out) and args.out.endswith(('.pkl', '.pickle'))
    if args.out and not pickle_out:
        if framework == 'mmdet':
            raise ValueError(f'--out must be a .pkl file for a detector, got {args.out!r}')
        if osp.isfile(args.out):
            raise ValueError(
                f'--out: expected a directory for the label maps (or a .pkl file), '
                f'got the existing file {args.out!r}'
            )
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    if args.tta:
        model = model.module
    load_model_weights(
        model,
        ckpt,
        source=args.checkpoint,
        partial=args.partial_load,
        cfg_hint='--cfg-options model.backbone.',
        partial_flag='--partial-load',
    )
    if pickle_out:
        # the results are gathered and dumped by the first process only
        with atomic_write(args.out, keep=is_main_process()) as tmp:
            dump = _dump_metric(framework, tmp)
            runner.test_evaluator.metrics.append(dump)
            metrics = runner.test()
    elif args.out:
        with atomic_directory(osp.abspath(args.out)) as tmp:
            _save_label_maps(runner, tmp)
            metrics = runner.test()
    else:
        metrics = runner.test()
    leave_process_group()
    return metrics


def _dump_metric(framework: str, path: str):
    if framework == 'mmdet':
        from mmdet.evaluation import DumpDetResults

        return DumpDetResults(out_file_path=path)
    return DumpResults(out_file_path=path)


def _save_label_maps(runner, out_dir: str) -> None:
    """Have the segmentation metric write each prediction as a PNG label map into ``out_dir``
    (MMSegmentation's IoUMetric does the writing: its ``output_dir``), as ``--out DIR`` of
    MMSegmentation's own tools/test.py."""
    iou = [m for m in runner.test_evaluator.metrics if type(m).__name__ == 'IoUMetric']
    if not iou:
        raise ValueError(
            f'--out DIR saves label maps through the IoUMetric of test_evaluator; '
            f'this config has {[type(m).__name__ for m in runner.test_evaluator.metrics]}'
        )
    for metric in iou:
        metric.output_dir = out_dir


if __name__ == '__main__':
    main()
    end_distributed_process()
