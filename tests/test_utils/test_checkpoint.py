"""Checkpoints load under torch's weights_only=True default; unsafe ones are refused, explained."""

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.runner.checkpoint import CheckpointLoader

import mmunirep  # noqa: F401  (installs the loader)
from mmunirep.utils.checkpoint import UNSAFE_ENV


class Payload:
    """Stands for an arbitrary object a malicious file could carry."""


class SneakyGetattr:
    """Pickles as getattr(HistoryBuffer, '__init__'): a step towards arbitrary code."""

    def __reduce__(self):
        return getattr, (HistoryBuffer, '__init__')


def test_mmengine_runner_checkpoint_contents_load(tmp_path):
    hub = MessageHub.get_instance('test_checkpoint')
    losses = np.random.default_rng(0).uniform(0.5, 2.0, size=5)
    for v in losses:
        hub.update_scalar('train/loss', float(v))
    hub.update_scalar('train/lr', np.float64(0.01))
    state = {
        'meta': {'seed': np.int64(7), 'iter': 5},
        'message_hub': hub.state_dict(),
        'state_dict': {'w': torch.randn(3, 3)},
    }
    path = tmp_path / 'ckpt.pth'
    torch.save(state, path)
    loaded = CheckpointLoader.load_checkpoint(str(path), map_location='cpu')
    buf = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(buf, HistoryBuffer)
    assert buf.mean(5) == pytest.approx(losses.mean(), rel=1e-12)
    assert loaded['meta']['seed'] == 7
    torch.testing.assert_close(loaded['state_dict']['w'], state['state_dict']['w'], rtol=0, atol=0)


@pytest.mark.parametrize('payload', [Payload, SneakyGetattr()])
def test_unsafe_checkpoint_is_refused_with_instructions(tmp_path, monkeypatch, payload):
    monkeypatch.delenv(UNSAFE_ENV, raising=False)
    path = tmp_path / 'unsafe.pth'
    torch.save({'state_dict': {'w': torch.randn(2)}, 'extra': payload}, path)
    with pytest.raises(RuntimeError, match=f'{UNSAFE_ENV}=1'):
        CheckpointLoader.load_checkpoint(str(path), map_location='cpu')
    monkeypatch.setenv(UNSAFE_ENV, '1')  # the explicit opt-in loads it
    assert 'extra' in CheckpointLoader.load_checkpoint(str(path), map_location='cpu')


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='not found'):
        CheckpointLoader.load_checkpoint(str(tmp_path / 'nope.pth'))
