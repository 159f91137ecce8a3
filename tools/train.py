"""Train a detector or segmentor (MMDetection / MMSegmentation config) with mmengine's Runner.

    python tools/train.py configs/detection/unireplknet_s_22k_cascade_3x.py
    python tools/train.py CONFIG --work-dir DIR --amp --resume [CKPT] --cfg-options k=v ...
"""
import argparse
import os

from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmunirep.utils import end_distributed_process, leave_process_group, prepare_cfg
from mmunirep.utils.config_utils import DictAction


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a UniRepLKNet detector or segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and checkpoints')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision (GPU)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by the real total batch size (configs under configs/ '
                        'already enable it)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT, or without a value from the latest checkpoint '
                        'in the work dir')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. train_cfg.max_epochs=1')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main(argv=None):
    args = parse_args(argv)
    cfg = prepare_cfg(args.config, args.work_dir, args.cfg_options, args.launcher)
    if args.amp:
        import torch
        if not torch.cuda.is_available():
            # mmengine's AmpOptimWrapper asserts a GPU deep inside the Runner; say it up front
            raise SystemExit('--amp trains in fp16 with mmengine\'s AmpOptimWrapper, which needs a '
                             'CUDA GPU; none is visible (torch.cuda.is_available() is False). '
                             'Train without --amp on the CPU.')
        wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if wrapper == 'AmpOptimWrapper':
            print_log('AMP is already enabled in the config', logger='current', level=30)
        elif wrapper != 'OptimWrapper':
            raise ValueError(f'--amp needs optim_wrapper.type OptimWrapper, got {wrapper}')
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise ValueError('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        if not os.path.isfile(args.resume):
            raise FileNotFoundError(f'--resume checkpoint not found: {args.resume!r}')
        cfg.resume = True
        cfg.load_from = args.resume
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    runner.train()
    leave_process_group()


if __name__ == '__main__':
    main()
    end_distributed_process()
