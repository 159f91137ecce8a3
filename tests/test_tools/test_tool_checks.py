"""The checks of the tools that run a model: tools/test.py and demo/image_demo.py refuse a
checkpoint that does not fit the config or holds NaN, load a partial one only when asked and write
their outputs whole; tools/test.py and tools/train.py check the data first and say what --resume
found."""

import os
import shutil

import pytest
import torch
from mmengine.config import Config

import mmunirep  # noqa: F401
from mmunirep.utils import CheckpointError, build_model
from mmunirep.utils.data_check import DataError

from helpers import load_tool, tiny_seg_config


def _save(model, path):
    torch.save({'state_dict': model.state_dict()}, path)
    return str(path)


def _segmentor(config, **options):
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(options)
    return build_model(cfg)


@pytest.mark.parametrize(
    'options, message',
    [
        (
            {
                'model.backbone.arch': 'f',
                'model.decode_head.in_channels': [48, 96, 192, 384],
                'model.auxiliary_head.in_channels': 192,
            },
            "its backbone is UniRepLKNet-F and the config's UniRepLKNet-A",
        ),
        (
            {'model.decode_head.num_classes': 150, 'model.auxiliary_head.num_classes': 150},
            'it predicts 150 classes (decode_head.conv_seg.weight), the config 4',
        ),
    ],
    ids=['another-variant', 'another-class-count'],
)
def test_a_checkpoint_that_does_not_fit_is_refused_with_what_fits(
    seg_model, tmp_path, options, message
):
    ckpt = _save(_segmentor(seg_model['config'], **options), tmp_path / 'other.pth')
    for tool, argv in (
        ('test', [seg_model['config'], ckpt, '--work-dir', str(tmp_path / 'w')]),
        (
            'image_demo',
            [_image(seg_model), seg_model['config'], ckpt, '--out-file', str(tmp_path / 'vis.png')],
        ),
    ):
        with pytest.raises(CheckpointError) as info:
            load_tool(tool).main(argv)
        text = str(info.value)
        assert 'does not fit the config' in text and 'have another shape' in text, text
        assert message in text and '--partial-load' in text, text
    assert not (tmp_path / 'vis.png').exists()


def _image(model):
    folder = os.path.join(model['data'], 'images', 'validation')
    return os.path.join(folder, sorted(os.listdir(folder))[0])


def test_a_detectors_checkpoint_for_a_segmentor_says_so(seg_model, det_model, tmp_path):
    with pytest.raises(CheckpointError) as info:
        load_tool('test').main(
            [seg_model['config'], det_model['ckpt'], '--work-dir', str(tmp_path / 'w')]
        )
    text = str(info.value)
    assert "it is a detector's checkpoint and the config builds a segmentor" in text, text
    assert 'downsample_norm_cfg' not in text  # no advice that leads to garbage


def _test_capturing_the_model(argv, monkeypatch):
    """tools/test.py's ``main(argv)``, and the model it tested, that model's weights just before
    the checkpoint was loaded into it, and what the checkpoint loader logged."""
    from mmunirep.utils import checkpoint as checkpoint_module

    tool = load_tool('test')
    seen, logged = {}, []
    load = tool.load_model_weights

    def spy(model, *args, **kwargs):
        seen['model'] = model
        seen['before'] = {k: v.clone() for k, v in model.state_dict().items()}
        return load(model, *args, **kwargs)

    monkeypatch.setattr(tool, 'load_model_weights', spy)
    monkeypatch.setattr(checkpoint_module, 'print_log', lambda msg, **kwargs: logged.append(msg))
    metrics = tool.main(argv)
    return metrics, seen['model'].state_dict(), seen['before'], logged


def _shifted(state):
    """``state`` with every floating-point tensor moved by a random 0.1 to 0.2 (BN variances stay
    positive): no tensor equals what a freshly built model holds, so a loaded tensor shows."""
    g = torch.Generator().manual_seed(7)
    return {
        k: v + (torch.rand(v.shape, generator=g) * 0.1 + 0.1) if v.is_floating_point() else v
        for k, v in state.items()
    }


def test_partial_load_on_purpose_and_allowed_differences(seg_model, tmp_path, monkeypatch):
    """The allowed differences load every tensor the model has but for the auxiliary head;
    --partial-load loads every tensor that fits by name and shape and leaves the others as the
    model was built, and logs which did not fit."""
    state = _shifted(torch.load(seg_model['ckpt'], map_location='cpu')['state_dict'])
    # a checkpoint saved for inference (no auxiliary head) with MMDetection 2's EMA buffers
    kept = {k: v for k, v in state.items() if not k.startswith('auxiliary_head.')}
    kept['ema_backbone_norm0_weight'] = state['backbone.norm0.weight']
    ckpt = tmp_path / 'infer.pth'
    torch.save({'state_dict': kept}, ckpt)
    metrics, after, before, logged = _test_capturing_the_model(
        [seg_model['config'], str(ckpt), '--work-dir', str(tmp_path / 'w1')], monkeypatch
    )
    assert 'mIoU' in metrics
    aux = {k for k in after if k.startswith('auxiliary_head.')}
    assert aux and set(after) - aux == set(kept) - {'ema_backbone_norm0_weight'}
    for k in after:
        expected = before[k] if k in aux else kept[k]
        assert torch.equal(after[k], expected), k
    assert not any('partial load' in m for m in logged), logged
    # a head of another class count loads only with --partial-load, the rest of the weights kept
    five = _segmentor(seg_model['config'], **{'model.decode_head.num_classes': 5})
    other = tmp_path / 'five.pth'
    five_state = _shifted(five.state_dict())
    torch.save({'state_dict': five_state}, other)
    metrics, after, before, logged = _test_capturing_the_model(
        [seg_model['config'], str(other), '--partial-load', '--work-dir', str(tmp_path / 'w2')],
        monkeypatch,
    )
    assert 'mIoU' in metrics
    unfit = {'decode_head.conv_seg.weight', 'decode_head.conv_seg.bias'}
    assert set(after) == set(five_state)
    assert after['decode_head.conv_seg.weight'].shape[0] == 4  # the config's classes
    for k in after:
        if k in unfit:  # left as built
            assert torch.equal(after[k], before[k]), k
        else:  # loaded: the checkpoint's value, which (but for BN's counts) the model did not hold
            assert torch.equal(after[k], five_state[k]), k
            assert not after[k].is_floating_point() or not torch.equal(before[k], after[k]), k
    warned = [m for m in logged if m.startswith('partial load as asked')]
    assert len(warned) == 1 and '2 have another shape' in warned[0], logged
    assert 'decode_head.conv_seg.weight: (5, ' in warned[0], warned
    assert f"loaded {len(after) - 2} of the model's {len(after)} tensors" in logged[-1], logged


def test_non_finite_weights_are_refused_by_every_tool(seg_model, tmp_path):
    state = torch.load(seg_model['ckpt'], map_location='cpu')['state_dict']
    state['decode_head.conv_seg.weight'][0, 0] = float('inf')
    ckpt = tmp_path / 'inf.pth'
    torch.save({'state_dict': state}, ckpt)
    for tool, argv in (
        ('test', [seg_model['config'], str(ckpt), '--work-dir', str(tmp_path / 'w')]),
        (
            'image_demo',
            [
                _image(seg_model),
                seg_model['config'],
                str(ckpt),
                '--out-file',
                str(tmp_path / 'vis.png'),
            ],
        ),
        (
            'export_onnx',
            [
                seg_model['config'],
                '--checkpoint',
                str(ckpt),
                '--out',
                str(tmp_path / 'x.onnx'),
                '--shape',
                '64',
                '64',
            ],
        ),
        ('benchmark', [seg_model['config'], '--checkpoint', str(ckpt), '--shape', '64', '64']),
    ):
        with pytest.raises(CheckpointError, match=r'decode_head\.conv_seg\.weight \(1 of'):
            load_tool(tool).main(argv)
    assert sorted(os.listdir(tmp_path)) == ['inf.pth']


def test_a_deploy_checkpoint_is_tested_in_the_deploy_structure(seg_model, tmp_path, monkeypatch):
    """A re-parameterized checkpoint, given without --cfg-options, is tested with the backbone
    built in the deploy structure (the tool says so) and predicts what the training structure
    predicts: the logits within fp32 rounding of the folding, the label maps wherever the two
    best classes are further apart than that. The checkpoint's BN statistics, GRN parameters
    and layer scales are random, so that every folded term shows in the logits."""
    import pickle

    deploy = tmp_path / 'deploy.pth'
    load_tool('reparameterize').main([seg_model['config'], seg_model['ckpt'], str(deploy)])
    import mmunirep.utils.checkpoint as checkpoint_utils

    runs = {}
    for name, ckpt in (('plain', seg_model['ckpt']), ('deploy', str(deploy))):
        tool = load_tool('test')
        said = []
        monkeypatch.setattr(
            checkpoint_utils, 'print_log', lambda msg, said=said, **kwargs: said.append(msg)
        )
        out = tmp_path / f'{name}.pkl'
        argv = [seg_model['config'], ckpt, '--out', str(out), '--work-dir', str(tmp_path / name)]
        metrics = tool.main(argv)
        with open(out, 'rb') as f:
            runs[name] = metrics, pickle.load(f), said
    (m_plain, plain, said_plain), (m_deploy, deployed, said_deploy) = runs['plain'], runs['deploy']
    switched = f'{deploy} is re-parameterized: using it with model.backbone.deploy=True'
    assert switched not in said_plain and switched in said_deploy
    assert m_deploy['mIoU'] == pytest.approx(m_plain['mIoU'], abs=1e-6)
    assert len(plain) == len(deployed) == 2  # the validation images
    tol = 1e-5  # of the largest logit: fp32 rounding of the folded BN, GRN and branches
    for a, b in zip(plain, deployed):
        la, lb = a['seg_logits']['data'], b['seg_logits']['data']
        assert la.shape == lb.shape and la.shape[0] == 4
        scale = la.abs().max()
        torch.testing.assert_close(lb / scale, la / scale, rtol=0, atol=tol)
        top2 = la.topk(2, dim=0).values
        clear = (top2[0] - top2[1]) > 2 * tol * scale
        assert clear.float().mean() > 0.9
        pa, pb = a['pred_sem_seg']['data'][0], b['pred_sem_seg']['data'][0]
        assert torch.equal(pa[clear], pb[clear])


def test_outputs_are_left_whole_when_the_test_fails(seg_model, tmp_path, monkeypatch):
    from mmseg.evaluation import IoUMetric

    out_pkl, out_dir = tmp_path / 'preds.pkl', tmp_path / 'maps'
    out_pkl.write_bytes(b'earlier predictions')

    def fail(self, results):
        raise RuntimeError('the evaluation failed')

    monkeypatch.setattr(IoUMetric, 'compute_metrics', fail)
    for out in (out_pkl, out_dir):
        with pytest.raises(RuntimeError, match='the evaluation failed'):
            load_tool('test').main(
                [
                    seg_model['config'],
                    seg_model['ckpt'],
                    '--out',
                    str(out),
                    '--work-dir',
                    str(tmp_path / 'w'),
                ]
            )
    assert out_pkl.read_bytes() == b'earlier predictions' and not out_dir.exists()
    assert sorted(os.listdir(tmp_path)) == ['preds.pkl', 'w']


def test_bad_label_maps_stop_the_test_before_it_starts(seg_model, tmp_path):
    import shutil

    import cv2

    root = tmp_path / 'data'
    shutil.copytree(seg_model['data'], root)
    maps = sorted((root / 'annotations' / 'validation').iterdir())
    label = cv2.imread(str(maps[0]), cv2.IMREAD_UNCHANGED)
    label[0, 0] = 9
    cv2.imwrite(str(maps[0]), label)
    config = tiny_seg_config(tmp_path, str(root))
    with pytest.raises(DataError, match=r'label values \[9\] are beyond the 4 classes'):
        load_tool('test').main([config, seg_model['ckpt'], '--work-dir', str(tmp_path / 'w')])
    with pytest.raises(DataError, match=r'label values \[9\]'):
        load_tool('train').main([config, '--work-dir', str(tmp_path / 'w')])


@pytest.mark.parametrize('load_from', [None, 'init.pth'])
def test_resume_without_a_checkpoint_starts_as_the_config_says(
    seg_model, tmp_path, monkeypatch, load_from
):
    """--resume on a first launch (no checkpoint in the work dir) keeps the config's load_from,
    and says where training starts."""
    train = load_tool('train')
    said, built = [], []

    class Stop(Exception):
        pass

    def stop(cfg):
        built.append(cfg)
        raise Stop

    monkeypatch.setattr(train, 'print_log', lambda msg, **kwargs: said.append(msg))
    monkeypatch.setattr(train.Runner, 'from_cfg', stop)
    options = ['--cfg-options', f'load_from={load_from}'] if load_from else []
    with pytest.raises(Stop):
        train.main(
            [seg_model['config'], '--resume', '--work-dir', str(tmp_path / 'empty'), *options]
        )
    start = f"the config's load_from {load_from}" if load_from else 'scratch'
    assert f'--resume: no checkpoint in {tmp_path / "empty"}, so training starts from {start}' in (
        said
    )
    assert built[0].get('load_from') == load_from and not built[0].get('resume', False)


def test_a_config_saved_by_a_resumed_training_tests_the_checkpoint_given(
    seg_model, tmp_path, monkeypatch
):
    """resume=True in the config (as mmengine saves a resumed training's) does not make the test
    resume from the work dir's latest checkpoint instead of the one given."""
    from mmengine.runner import Runner

    work_dir = tmp_path / 'work'
    work_dir.mkdir()
    shutil.copy(seg_model['ckpt'], work_dir / 'iter_9.pth')
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'iter_9.pth'))

    def resume(self, *args, **kwargs):
        raise AssertionError('the Runner resumed from the work dir')

    monkeypatch.setattr(Runner, 'resume', resume)
    metrics = load_tool('test').main(
        [seg_model['config'], seg_model['ckpt'], '--work-dir', str(work_dir), '--cfg-options',
         'resume=True']
    )  # fmt: skip
    assert 'mIoU' in metrics
