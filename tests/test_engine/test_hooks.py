"""NonFiniteLossHook stops a diverged run with a clear error."""

import types

import pytest
import torch

from mmunirep.engine import NonFiniteLossHook


def test_the_run_stops_after_patience_non_finite_losses_in_a_row():
    hook = NonFiniteLossHook(patience=3)
    runner = types.SimpleNamespace(iter=0)
    losses = [1.0, float('nan'), float('inf'), 2.0, float('nan'), float('nan')]
    for i, loss in enumerate(losses):
        runner.iter = i
        hook.after_train_iter(runner, i, outputs={'loss': torch.tensor(loss)})
    with pytest.raises(
        RuntimeError,
        match=r'training stopped at iteration 7: the loss has been '
        r'NaN or Inf for 3 iterations in a row',
    ):
        runner.iter = 6
        hook.after_train_iter(
            runner, 6, outputs={'loss': torch.tensor(float('nan')), 'loss_cls': torch.tensor(0.1)}
        )
    hook.after_train_iter(runner, 7, outputs={})  # nothing logged: nothing to check
    with pytest.raises(ValueError, match='patience must be a positive int'):
        NonFiniteLossHook(patience=0)


def test_train_tool_adds_the_hook_once():
    from mmengine.config import Config

    from helpers import load_tool

    train = load_tool('train')
    cfg = Config(dict(custom_hooks=[dict(type='EMAHook')]))
    train.add_non_finite_loss_hook(cfg)
    train.add_non_finite_loss_hook(cfg)
    assert [h['type'] for h in cfg.custom_hooks] == ['EMAHook', 'mmunirep.NonFiniteLossHook']
