"""Hooks for reproducible, resumable training."""

import logging

import torch
from mmengine.dist import get_world_size
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.runner import EpochBasedTrainLoop, set_random_seed

from mmunirep.registry import HOOKS, register_module


@register_module(HOOKS)
class ReproducibleResumeHook(Hook):
    """Make a resumed run continue exactly as the uninterrupted run would have (same seed,
    deterministic ops): same data, same augmentations, same drop-path masks, same final weights.

    mmengine seeds once, when the Runner starts, and keeps no random state in its checkpoints:
    - epoch-based loops resume at an epoch boundary, so python, numpy and torch are re-seeded with
      ``seed + epoch`` at the start of every epoch, in the uninterrupted and the resumed run alike;
    - iteration-based loops replay the data pipeline up to the resumed iteration (which re-draws
      the python / numpy numbers of the augmentations), so the torch generator state, which the
      model draws from (dropout, drop path), is saved in each checkpoint and restored on resume.

    Only the first process saves checkpoints (and so its generators' state). With mmengine's
    default ``randomness.diff_rank_seed=False`` every process draws the same numbers, on the CPU
    and on its own GPU, so that state is every process's; with ``diff_rank_seed=True`` in a
    distributed run it is not restored, and the resumed run goes on from the processes' seeds.
    Data loader workers that persist across epochs keep random state that no checkpoint holds:
    a resumed epoch-based run with them is said to differ from the uninterrupted one.
    """

    priority = 'VERY_HIGH'

    def before_train(self, runner) -> None:
        loader = runner.cfg.get('train_dataloader') or {}
        if (
            getattr(runner, '_resume', False)
            and isinstance(runner.train_loop, EpochBasedTrainLoop)
            and loader.get('persistent_workers', False)
            and loader.get('num_workers', 0) > 0
        ):
            print_log(
                'resuming with persistent data loader workers: their random state (the '
                "augmentations') is in no checkpoint, so the epochs after this one differ from "
                "an uninterrupted run's; train_dataloader.persistent_workers=False resumes exactly",
                logger='current',
                level=logging.WARNING,
            )

    def before_train_epoch(self, runner) -> None:
        if isinstance(runner.train_loop, EpochBasedTrainLoop):
            seed = runner.seed + runner.epoch
            set_random_seed(
                seed,
                deterministic=runner._randomness_cfg.get('deterministic', False),
                diff_rank_seed=runner._randomness_cfg.get('diff_rank_seed', False),
            )
            print_log(f'epoch {runner.epoch + 1}: random seed {seed}', logger='current', level=10)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint['torch_rng_state'] = dict(
            cpu=torch.get_rng_state(),
            cuda=torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        )

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get('torch_rng_state')
        if not getattr(runner, '_resume', False) or state is None:
            return
        if get_world_size() > 1 and runner._randomness_cfg.get('diff_rank_seed', False):
            print_log(
                "not restoring the checkpoint's torch random state: with diff_rank_seed each "
                'process has its own, and only the first saved it',
                logger='current',
                level=logging.WARNING,
            )
            return
        torch.set_rng_state(state['cpu'])
        restored = 'CPU'
        cuda = state['cuda']
        if isinstance(cuda, list):  # checkpoints that kept every device's state
            cuda = cuda[0] if cuda else None
        if cuda is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(cuda)  # the first process's GPU's, onto this process's
            restored += ' and GPU'
        print_log(
            f"restored the checkpoint's torch random state ({restored} generator)", logger='current'
        )


@register_module(HOOKS)
class NonFiniteLossHook(Hook):
    """Stop training with a clear error once the loss has been NaN or Inf for ``patience``
    iterations in a row.

    A single non-finite loss can be a mixed-precision overflow that the loss scaler skips; several
    in a row mean the run has diverged, and every checkpoint it saves from then on is lost time.
    MMDetection's ``CheckInvalidLossHook`` looks only every ``interval`` iterations and stops at
    the first one; MMSegmentation has none. ``tools/train.py`` adds this hook to every run.
    """

    priority = 'ABOVE_NORMAL'  # before the checkpoint hook saves the iteration's weights

    def __init__(self, patience: int = 3):
        if not isinstance(patience, int) or patience < 1:
            raise ValueError(f'patience must be a positive int, got {patience!r}')
        self.patience = patience
        self.count = 0

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        loss = (outputs or {}).get('loss')
        if loss is None:
            return
        if bool(torch.isfinite(torch.as_tensor(loss)).all()):
            self.count = 0
            return
        self.count += 1
        print_log(
            f'iteration {runner.iter + 1}: the loss is {float(loss)} ({self.count} of '
            f'{self.patience} non-finite in a row)',
            logger='current',
            level=30,
        )
        if self.count >= self.patience:
            losses = {k: float(v) for k, v in outputs.items() if 'loss' in k}
            raise RuntimeError(
                f'training stopped at iteration {runner.iter + 1}: the loss has been NaN or Inf '
                f'for {self.count} iterations in a row ({losses}). The weights have diverged: '
                'resume from a checkpoint saved before (in the work dir) with a lower learning '
                'rate, or check the data and the pretrained weights'
            )
