"""Hooks for reproducible, resumable training."""
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.runner import set_random_seed

from mmunirep.registry import HOOKS, register_module


@register_module(HOOKS)
class EpochSeedHook(Hook):
    """Re-seed python, numpy and torch at the start of every training epoch with
    ``seed + epoch``.

    mmengine seeds once, when the Runner starts, and does not store the random states in its
    checkpoints, so a run resumed from the checkpoint of epoch ``e`` draws other augmentations and
    drop-path masks than the uninterrupted run did in epoch ``e + 1``. With this hook both start
    every epoch from the same state, and a resumed run (same seed, deterministic ops) ends with
    the same weights. Needs ``randomness.seed`` in the config.
    """
    priority = 'VERY_HIGH'

    def before_train_epoch(self, runner) -> None:
        if runner.seed is None:
            raise ValueError('EpochSeedHook needs a seed: set randomness=dict(seed=...)')
        seed = runner.seed + runner.epoch
        set_random_seed(seed, deterministic=runner._randomness_cfg.get('deterministic', False))
        print_log(f'epoch {runner.epoch + 1}: random seed {seed}', logger='current', level=10)
