"""NonFiniteLossHook stops a diverged run with a clear error; ReproducibleResumeHook restores
the random state it saved, and says when it cannot."""

import types

import pytest
import torch
from mmengine.runner import EpochBasedTrainLoop

import mmunirep.engine.hooks as hooks_module
from mmunirep.engine import NonFiniteLossHook, ReproducibleResumeHook


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
    # a config that names the hook by its class (a pure-Python config's import)
    cfg = Config(dict(custom_hooks=[dict(type=NonFiniteLossHook, patience=5)]))
    train.add_non_finite_loss_hook(cfg)
    assert [h['type'] for h in cfg.custom_hooks] == [NonFiniteLossHook]


def resume_runner(diff_rank_seed=False, persistent_workers=False, epoch_based=True):
    loop = object.__new__(EpochBasedTrainLoop) if epoch_based else object()
    loader = dict(num_workers=2, persistent_workers=persistent_workers)
    return types.SimpleNamespace(
        _resume=True,
        _randomness_cfg=dict(seed=0, diff_rank_seed=diff_rank_seed),
        train_loop=loop,
        cfg=dict(train_dataloader=loader),
    )


def test_the_saved_torch_random_state_is_restored_on_resume(monkeypatch):
    hook, checkpoint = ReproducibleResumeHook(), {}
    torch.manual_seed(3)
    hook.before_save_checkpoint(None, checkpoint)
    expected = torch.rand(5)
    torch.manual_seed(4)
    hook.after_load_checkpoint(resume_runner(), checkpoint)
    assert torch.equal(torch.rand(5), expected)
    # a run that is not resumed (load_from) keeps its own stream
    torch.manual_seed(4)
    fresh = torch.rand(5)
    torch.manual_seed(4)
    hook.after_load_checkpoint(types.SimpleNamespace(_resume=False), checkpoint)
    assert torch.equal(torch.rand(5), fresh) and not torch.equal(fresh, expected)


def test_with_a_seed_per_process_the_first_processs_state_is_not_given_to_all(monkeypatch):
    logged = []
    monkeypatch.setattr(hooks_module, 'get_world_size', lambda: 2)
    monkeypatch.setattr(hooks_module, 'print_log', lambda msg, **kwargs: logged.append(msg))
    hook, checkpoint = ReproducibleResumeHook(), {}
    torch.manual_seed(3)
    hook.before_save_checkpoint(None, checkpoint)
    saved = torch.rand(5)
    torch.manual_seed(4)
    own = torch.rand(5)
    torch.manual_seed(4)
    hook.after_load_checkpoint(resume_runner(diff_rank_seed=True), checkpoint)
    assert torch.equal(torch.rand(5), own) and not torch.equal(own, saved)
    assert any('not restoring' in m and 'diff_rank_seed' in m for m in logged), logged
    # the same seed in every process (mmengine's default): restored
    hook.after_load_checkpoint(resume_runner(diff_rank_seed=False), checkpoint)
    assert torch.equal(torch.rand(5), saved)


@pytest.mark.parametrize(
    'persistent_workers, epoch_based, warned',
    [(True, True, True), (False, True, False), (True, False, False)],
)
def test_resuming_with_persistent_workers_is_said_to_be_inexact(
    monkeypatch, persistent_workers, epoch_based, warned
):
    logged = []
    monkeypatch.setattr(hooks_module, 'print_log', lambda msg, **kwargs: logged.append(msg))
    runner = resume_runner(persistent_workers=persistent_workers, epoch_based=epoch_based)
    ReproducibleResumeHook().before_train(runner)
    assert any('persistent data loader workers' in m for m in logged) is warned, logged
