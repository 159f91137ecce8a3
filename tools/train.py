"""Train a detector or segmentor (MMDetection / MMSegmentation config) with mmengine's Runner.

    python tools/train.py configs/detection/unireplknet_s_22k_cascade_3x.py
    python tools/train.py CONFIG --work-dir DIR --amp --resume [CKPT] --cfg-options k=v ...

The annotations are checked before the first iteration (``--check-data``), and training stops
with a clear error when the loss stays NaN or Inf (mmunirep's NonFiniteLossHook).
"""

import argparse
import os

from mmengine.config import DictAction
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner, find_latest_checkpoint

from mmunirep.utils import end_distributed_process, leave_process_group, prepare_cfg
from mmunirep.utils.data_check import CHECK_MODES, check_datasets


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a UniRepLKNet detector or segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and checkpoints')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision (GPU)')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help="scale the lr by the real total batch size against the config's "
        "auto_scale_lr.base_batch_size (the recipe's)",
    )
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from CKPT, or without a value from the latest checkpoint in the work dir',
    )
    parser.add_argument(
        '--check-data',
        choices=CHECK_MODES,
        default='sample',
        help='check the annotations before training: COCO files always whole; '
        'label maps a sample (default), all of them (full), or none (off)',
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, e.g. train_cfg.max_epochs=1',
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
    cfg = prepare_cfg(args.config, args.work_dir, args.cfg_options, args.launcher)
    if args.amp:
        import torch

        if not torch.cuda.is_available():
            # mmengine's AmpOptimWrapper asserts a GPU deep inside the Runner; say it up front
            raise SystemExit(
                "--amp trains in fp16 with mmengine's AmpOptimWrapper, which needs a "
                'CUDA GPU; none is visible (torch.cuda.is_available() is False). '
                'Train without --amp on the CPU.'
            )
        if not cfg.get('optim_wrapper'):
            raise ValueError("--amp switches the config's optim_wrapper to AMP; it has none")
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
        if find_latest_checkpoint(cfg.work_dir) is None:  # a first launch: the config's start
            start = f"the config's load_from {cfg.load_from}" if cfg.get('load_from') else 'scratch'
            print_log(
                f'--resume: no checkpoint in {cfg.work_dir}, so training starts from {start}',
                logger='current',
                level=30,
            )
        else:  # mmengine resumes from the work dir's latest checkpoint
            cfg.resume = True
            cfg.load_from = None
    elif args.resume is not None:
        if not os.path.isfile(args.resume):
            raise FileNotFoundError(f'--resume checkpoint not found: {args.resume!r}')
        cfg.resume = True
        cfg.load_from = args.resume
    add_non_finite_loss_hook(cfg)
    check_datasets(cfg, ('train', 'val'), args.check_data)
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    log_learning_rate(cfg, runner)
    runner.train()
    leave_process_group()


def add_non_finite_loss_hook(cfg) -> None:
    hooks = list(cfg.get('custom_hooks') or [])

    def name(hook_type) -> str:  # a registry name ('mmunirep.X') or the class itself
        return hook_type.__name__ if isinstance(hook_type, type) else str(hook_type).split('.')[-1]

    if not any(name(h.get('type', '')) == 'NonFiniteLossHook' for h in hooks):
        hooks.append(dict(type='mmunirep.NonFiniteLossHook'))
        cfg.custom_hooks = hooks


def log_learning_rate(cfg, runner) -> None:
    """Say which lr the run uses: the config's, or the one --auto-scale-lr scales it to."""
    lr = cfg.get('optim_wrapper', {}).get('optimizer', {}).get('lr')
    loader = cfg.get('train_dataloader') or {}
    scale = cfg.get('auto_scale_lr') or {}
    if lr is None or 'batch_size' not in loader or 'base_batch_size' not in scale:
        return
    total = runner.world_size * loader['batch_size']
    base = scale['base_batch_size']
    if scale.get('enable', False):
        print_log(
            f"lr {lr * total / base:g}: the config's {lr:g} scaled by the total batch size "
            f'{total} / {base} (auto_scale_lr)',
            logger='current',
        )
    else:
        note = (
            ''
            if total == base
            else (
                f" (the recipe's is {base}; --auto-scale-lr would scale "
                f'the lr to {lr * total / base:g})'
            )
        )
        print_log(f'lr {lr:g} as in the config, total batch size {total}{note}', logger='current')


if __name__ == '__main__':
    main()
    end_distributed_process()
