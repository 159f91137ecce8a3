"""tools/model_converters: re-parameterized detectors and segmentors give the same predictions
and metrics; the authors' released MMDetection 2 / MMSegmentation 0.x checkpoints convert; bad
paths and checkpoints get clear errors."""

import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest
import torch

import mmunirep  # noqa: F401
from mmunirep.utils import CheckpointError

from helpers import ROOT, SCRIPTS, load_tool, run_test


@pytest.mark.slow
def test_reparameterized_segmentor_gives_the_same_predictions_and_miou(seg_model):
    s = seg_model
    deploy_ckpt = str(s['tmp'] / 'seg_deploy.pth')
    load_tool('reparameterize').main([s['config'], s['ckpt'], deploy_ckpt])
    state = torch.load(deploy_ckpt, map_location='cpu')['state_dict']
    assert not any('origin_bn' in k or 'dil_conv' in k for k in state)
    m_train, p_train = run_test(s['config'], s['ckpt'], s['tmp'] / 'train.pkl')
    m_deploy, p_deploy = run_test(s['config'], deploy_ckpt, s['tmp'] / 'deploy.pkl', deploy=True)
    assert set(m_train) == set(m_deploy) and 'mIoU' in m_train
    for k in m_train:
        assert m_deploy[k] == pytest.approx(m_train[k], abs=1e-6, nan_ok=True), k
    assert (
        len(p_train)
        == len(p_deploy)
        == len(os.listdir(os.path.join(s['data'], 'images', 'validation')))
    )
    for a, b in zip(p_train, p_deploy):
        la, lb = a['seg_logits']['data'], b['seg_logits']['data']
        assert ((la - lb).abs().max() / la.abs().max()).item() < 1e-4
        assert torch.equal(a['pred_sem_seg']['data'], b['pred_sem_seg']['data'])


@pytest.mark.slow
def test_reparameterized_detector_gives_the_same_predictions_and_map(det_model):
    s = det_model
    deploy_ckpt = str(s['tmp'] / 'det_deploy.pth')
    load_tool('reparameterize').main([s['config'], s['ckpt'], deploy_ckpt])
    m_train, p_train = run_test(s['config'], s['ckpt'], s['tmp'] / 'train.pkl')
    m_deploy, p_deploy = run_test(s['config'], deploy_ckpt, s['tmp'] / 'deploy.pkl', deploy=True)
    assert 'coco/bbox_mAP' in m_train and 'coco/segm_mAP' in m_train
    for k in m_train:
        assert m_deploy[k] == pytest.approx(m_train[k], abs=1e-6, nan_ok=True), k
    assert len(p_train) == len(p_deploy) == 2
    for a, b in zip(p_train, p_deploy):
        ia, ib = a['pred_instances'], b['pred_instances']
        assert len(ia['scores']) == len(ib['scores']) > 0
        torch.testing.assert_close(ib['scores'], ia['scores'], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ib['bboxes'], ia['bboxes'], rtol=1e-4, atol=1e-3)
        assert torch.equal(ia['labels'], ib['labels'])


def test_convert_released_mmdet2_checkpoint(det_model, tmp_path):
    """An MMDetection 2.28 Cascade Mask R-CNN checkpoint: ema_* buffers, CLASSES in meta."""
    s = det_model
    state = torch.load(s['ckpt'], map_location='cpu')['state_dict']
    ema = {'ema_' + k.replace('.', '_'): v + 1.0 for k, v in state.items() if v.is_floating_point()}
    released = {
        'meta': {
            'CLASSES': ('circle', 'square', 'triangle'),
            'mmcv_version': '1.5.0',
            'mmdet_version': '2.28.2',
            'epoch': 36,
            'config': '...',
        },
        'state_dict': {**state, **ema},
        'optimizer': {'state': {}, 'param_groups': [{'lr': 1e-6}]},
    }
    src, dst = tmp_path / 'released.pth', tmp_path / 'converted.pth'
    torch.save(released, src)
    load_tool('convert_checkpoint').main([str(src), str(dst), '--config', s['config']])
    converted = torch.load(dst, map_location='cpu')
    assert converted['meta']['dataset_meta']['classes'] == ('circle', 'square', 'triangle')
    # every key lands (checked against the config)
    assert set(converted['state_dict']) == set(state)
    for k, v in state.items():
        assert torch.equal(converted['state_dict'][k], v)
    ema_dst = tmp_path / 'converted_ema.pth'
    load_tool('convert_checkpoint').main([str(src), str(ema_dst), '--weights', 'ema-buffers'])
    ema_state = torch.load(ema_dst, map_location='cpu')['state_dict']
    k = 'backbone.stages.0.0.pwconv1.1.weight'
    torch.testing.assert_close(ema_state[k], state[k] + 1.0, rtol=0, atol=0)


def test_convert_released_mmseg0_checkpoint(seg_model, tmp_path):
    s = seg_model
    state = torch.load(s['ckpt'], map_location='cpu')['state_dict']
    released = {
        'meta': {
            'CLASSES': ('circle', 'square', 'triangle'),
            'PALETTE': [[1, 2, 3], [4, 5, 6], [7, 8, 9]],
            'iter': 160000,
        },
        'state_dict': {'module.' + k: v for k, v in state.items()},
    }
    src, dst = tmp_path / 'released.pth', tmp_path / 'converted.pth'
    torch.save(released, src)
    load_tool('convert_checkpoint').main([str(src), str(dst), '--config', s['config']])
    converted = torch.load(dst, map_location='cpu')
    assert set(converted['state_dict']) == set(state)
    assert converted['meta']['dataset_meta']['palette'][2] == [7, 8, 9]
    # a checkpoint of another variant does not fit the config: said clearly
    other = {k.replace('decode_head', 'decode_hed'): v for k, v in state.items()}
    torch.save({'state_dict': other}, src)
    with pytest.raises(RuntimeError, match='does not fit'):
        load_tool('convert_checkpoint').main([str(src), str(dst), '--config', s['config']])


def test_tools_fail_clearly_on_bad_paths_and_checkpoints(seg_model, tmp_path):
    s = seg_model
    with pytest.raises(FileNotFoundError, match='config file not found'):
        load_tool('reparameterize').main(['nope.py', s['ckpt'], str(tmp_path / 'o.pth')])
    with pytest.raises(FileNotFoundError, match='not found'):
        load_tool('test').main([s['config'], str(tmp_path / 'missing.pth')])
    with pytest.raises(FileNotFoundError, match='not found'):
        load_tool('reparameterize').main(
            [s['config'], str(tmp_path / 'missing.pth'), str(tmp_path / 'o.pth')]
        )
    # a detector's checkpoint for a segmentor config
    torch.save({'state_dict': {'backbone.foo': torch.randn(2)}}, tmp_path / 'wrong.pth')
    with pytest.raises(RuntimeError, match='does not fit'):
        load_tool('reparameterize').main(
            [s['config'], str(tmp_path / 'wrong.pth'), str(tmp_path / 'o.pth')]
        )


def _with_nan(ckpt, tmp_path, key_part='stages.1.0.dwconv'):
    state = torch.load(ckpt, map_location='cpu')['state_dict']
    key = next(k for k in state if key_part in k and state[k].is_floating_point())
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float('nan')
    path = tmp_path / 'nan.pth'
    torch.save({'state_dict': state}, path)
    return str(path), key


def test_converters_refuse_non_finite_weights(seg_model, tmp_path):
    s = seg_model
    path, key = _with_nan(s['ckpt'], tmp_path)
    out = tmp_path / 'out.pth'
    for tool, argv in (
        ('reparameterize', [s['config'], path, str(out)]),
        ('convert_checkpoint', [path, str(out), '--config', s['config']]),
        ('convert_checkpoint', [path, str(out)]),
    ):
        with pytest.raises(CheckpointError, match=f'NaN or Inf in 1 tensors, e.g. {key}'):
            load_tool(tool).main(argv)
    assert not out.exists()


def test_converters_refuse_to_overwrite_their_input_unless_asked(seg_model, tmp_path):
    s = seg_model
    ckpt = tmp_path / 'model.pth'
    shutil.copy(s['ckpt'], ckpt)
    before = ckpt.read_bytes()
    for tool, argv in (
        ('reparameterize', [s['config'], str(ckpt), str(ckpt)]),
        ('convert_checkpoint', [str(ckpt), str(ckpt)]),
    ):
        with pytest.raises(ValueError, match='is the input .* --overwrite-input'):
            load_tool(tool).main(argv)
        assert ckpt.read_bytes() == before
    load_tool('reparameterize').main([s['config'], str(ckpt), str(ckpt), '--overwrite-input'])
    state = torch.load(ckpt, map_location='cpu')['state_dict']
    assert any(k.endswith('pwconv2.0.bias') for k in state)  # replaced by the deploy structure
    # and its advice leads somewhere: an already re-parameterized checkpoint is said to be one
    with pytest.raises(
        CheckpointError,
        match='already re-parameterized .* --cfg-options model.backbone.deploy=True',
    ):
        load_tool('reparameterize').main([s['config'], str(ckpt), str(tmp_path / 'o.pth')])


@pytest.mark.slow
@pytest.mark.parametrize('tool', ['reparameterize', 'convert_checkpoint'])
def test_a_full_disk_leaves_no_truncated_output_and_the_earlier_one_whole(
    seg_model, tmp_path, tool
):
    """A write that fails part way (a file-size limit: `ulimit -f`) leaves neither a truncated
    output nor a damaged earlier one, and the tool fails."""
    s = seg_model
    out = tmp_path / 'out.pth'
    out.write_bytes(b'an earlier result')
    argv = (
        [s['config'], s['ckpt'], str(out)]
        if tool == 'reparameterize'
        else [s['ckpt'], str(out), '--config', s['config']]
    )
    script = osp.join(ROOT, SCRIPTS[tool])
    limit_kb = os.path.getsize(s['ckpt']) // 2048  # half of the checkpoint
    proc = subprocess.run(
        ['bash', '-c', f'ulimit -f {limit_kb}; exec "$0" "$@"', sys.executable, script, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and f'could not write {out}' in proc.stderr, proc.stderr[-2000:]
    assert out.read_bytes() == b'an earlier result'
    assert sorted(os.listdir(tmp_path)) == ['out.pth']


def test_convert_without_config_or_classes(seg_model, tmp_path, capsys):
    """Without --config the keys are converted unchecked; a checkpoint without class names
    converts; one without model tensors is refused."""
    state = torch.load(seg_model['ckpt'], map_location='cpu')['state_dict']
    src, dst = tmp_path / 'released.pth', tmp_path / 'converted.pth'
    torch.save({'meta': {'CLASSES': None, 'PALETTE': None}, 'state_dict': state}, src)
    load_tool('convert_checkpoint').main([str(src), str(dst)])
    converted = torch.load(dst, map_location='cpu')
    assert set(converted['state_dict']) == set(state) and 'dataset_meta' not in converted['meta']
    torch.save({'meta': {}, 'optimizer': {'state': {}}}, src)
    with pytest.raises(CheckpointError, match='holds no model tensors'):
        load_tool('convert_checkpoint').main([str(src), str(tmp_path / 'x.pth')])
    assert not (tmp_path / 'x.pth').exists()
    # --cfg-options without a config to apply them to: argparse's usage error (exit status 2)
    with pytest.raises(SystemExit) as info:
        load_tool('convert_checkpoint').main([str(src), str(dst), '--cfg-options', 'a=1'])
    assert info.value.code == 2
    assert 'error: --cfg-options needs --config' in capsys.readouterr().err
