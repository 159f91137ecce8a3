"""Reading checkpoints: under torch's weights_only=True, with what a bad file is; the tensors,
their finiteness and their fit to a whole model."""

import pickle

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.runner.checkpoint import CheckpointLoader

import mmunirep  # noqa: F401  (installs the loader)
from mmunirep.utils.checkpoint import (
    UNSAFE_ENV,
    CheckpointError,
    check_finite,
    fit_problems,
    model_state_dict,
)

from helpers import SEG_QUICKSTART


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


# -- what a file that is not a usable checkpoint is ---------------------------------------------
def _torch_file(path, obj, legacy=False):
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.mark.parametrize(
    'make, what',
    [
        (lambda p: p.write_bytes(b''), 'is empty (0 bytes)'),
        (lambda p: p.write_text('epoch,loss\n1,0.5\n'), 'it is a text file'),
        (lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000)), 'not a file written by'),
        (lambda p: p.write_bytes(pickle.dumps({'a': 1})), 'a Python pickle, not a file written'),
        (
            lambda p: p.write_bytes(
                _torch_file(p, {'state_dict': {'w': torch.randn(64)}}).read_bytes()[:300]
            ),
            'a truncated or damaged PyTorch checkpoint',
        ),
        (
            lambda p: p.write_bytes(
                _torch_file(p, {'state_dict': {'w': torch.randn(64)}}, legacy=True).read_bytes()[
                    :200
                ]
            ),
            'a truncated or damaged PyTorch checkpoint',
        ),
    ],
    ids=['empty', 'text', 'random', 'pickle', 'truncated', 'truncated-legacy'],
)
def test_a_file_that_is_not_a_checkpoint_says_what_it_is(tmp_path, monkeypatch, make, what):
    monkeypatch.delenv(UNSAFE_ENV, raising=False)
    path = tmp_path / 'model.pth'
    make(path)
    with pytest.raises(CheckpointError) as info:
        CheckpointLoader.load_checkpoint(str(path), map_location='cpu')
    assert what in str(info.value) and str(path) in str(info.value)
    assert UNSAFE_ENV not in str(info.value)  # no advice to load it unsafely


def test_a_checkpoint_without_model_tensors_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match='holds no model tensors'):
        model_state_dict({'optimizer': {'state': {}}, 'meta': {'epoch': 3}}, 'opt.pth')
    assert list(model_state_dict({'state_dict': {'module.w': torch.ones(2), 'step': 3}})) == ['w']


def test_non_finite_weights_are_named():
    state = {
        'a.weight': torch.randn(3),
        'b.weight': torch.tensor([1.0, float('nan')]),
        'c.bias': torch.tensor([float('inf'), 1, 2]),
        'n': torch.tensor(3),
    }
    with pytest.raises(
        CheckpointError,
        match=r'NaN or Inf in 2 tensors, e\.g\. b\.weight \(1 of '
        r'2 values\), c\.bias \(1 of 3 values\)',
    ):
        check_finite(state, 'x.pth')
    check_finite({'a.weight': torch.randn(3), 'n': torch.tensor(3)})


# -- fitting a checkpoint to a whole model -------------------------------------------------------
def _segmentor(arch='a', num_classes=3, aux=True):
    from mmengine.config import Config

    from mmunirep.utils import build_model

    cfg = Config.fromfile(SEG_QUICKSTART)
    cfg.model.backbone.arch = arch
    cfg.model.decode_head.num_classes = num_classes
    dims = {'a': [40, 80, 160, 320], 'f': [48, 96, 192, 384]}[arch]
    cfg.model.decode_head.in_channels = dims
    cfg.model.auxiliary_head.in_channels = dims[2]
    cfg.model.auxiliary_head.num_classes = num_classes
    if not aux:
        cfg.model.auxiliary_head = None
    with torch.device('meta'):
        return build_model(cfg)


def _state(model):
    return {k: torch.zeros(v.shape) for k, v in model.state_dict().items()}


def test_fit_problems_count_name_and_say_what_would_fit():
    model = _segmentor('a')
    assert fit_problems(model, _state(_segmentor('a')), 'same.pth') is None
    other_variant = fit_problems(model, _state(_segmentor('f')), 'f.pth')
    assert 'f.pth does not fit' in other_variant and 'have another shape' in other_variant
    assert "UniRepLKNet-F and the config's UniRepLKNet-A" in other_variant
    assert "model.backbone.arch='f'" in other_variant
    classes = fit_problems(model, _state(_segmentor('a', num_classes=150)), 'ade.pth')
    assert 'predicts 150 classes (decode_head.conv_seg.weight), the config 3' in classes
    deploy = _segmentor('a')
    deploy.backbone.switch_to_deploy()
    structure = fit_problems(model, _state(deploy), 'deploy.pth')
    assert 'build it with model.backbone.deploy=True' in structure
    detector = {
        'backbone.stages.0.0.gamma': torch.zeros(40),
        'rpn_head.rpn_cls.weight': torch.zeros(3, 64, 1, 1),
        'roi_head.bbox_head.0.fc_cls.weight': torch.zeros(4, 8),
    }
    wrong_kind = fit_problems(model, detector, 'det.pth')
    assert "it is a detector's checkpoint and the config builds a segmentor" in wrong_kind
    assert "prefix='backbone.'" in wrong_kind and 'downsample_norm_cfg' not in wrong_kind


def test_allowed_differences_are_allowed_and_only_those():
    model = _segmentor('a')
    state = _state(model)
    extra = dict(
        state,
        ema_backbone_stages_0_0_gamma=torch.zeros(40),
        **{'data_preprocessor.mean': torch.zeros(3, 1, 1)},
    )
    del extra[next(k for k in extra if k.endswith('num_batches_tracked'))]
    assert fit_problems(model, extra, 'x.pth') is None
    no_aux = {k: v for k, v in state.items() if not k.startswith('auxiliary_head.')}
    assert fit_problems(model, no_aux, 'x.pth', inference=True) is None
    assert 'model tensors are not in it' in fit_problems(model, no_aux, 'x.pth', inference=False)
    assert fit_problems(_segmentor('a', aux=False), state, 'x.pth', inference=True) is None
    del state['decode_head.conv_seg.bias']
    assert 'decode_head.conv_seg.bias' in fit_problems(model, state, 'x.pth')
