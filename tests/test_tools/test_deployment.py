"""tools/deployment: ONNX export of the backbone and the segmentor, checked in onnxruntime."""

import pytest
import torch

import mmunirep  # noqa: F401

from helpers import load_tool


@pytest.mark.parametrize('part', ['backbone', 'segmentor'])
def test_export_onnx_matches_pytorch(seg_model, tmp_path, part):
    import onnx

    s = seg_model
    out = str(tmp_path / f'{part}.onnx')
    errors = load_tool('export_onnx').main(
        [
            s['config'],
            '--checkpoint',
            s['ckpt'],
            '--out',
            out,
            '--part',
            part,
            '--shape',
            '64',
            '96',
        ]
    )
    assert max(errors) <= 1e-4
    ops = {n.op_type for n in onnx.load(out).graph.node}
    assert 'Conv' in ops and not {n.domain for n in onnx.load(out).graph.node} - {''}


def test_matmul_adaptive_pool_equals_torch():
    export_onnx = load_tool('export_onnx')
    x = torch.randn(2, 5, 13, 22)
    for size in (1, 2, 3, 6, (4, 7)):
        torch.testing.assert_close(
            export_onnx.MatmulAdaptiveAvgPool2d(size)(x),
            torch.nn.functional.adaptive_avg_pool2d(x, size),
            rtol=1e-5,
            atol=1e-6,
        )


def test_export_onnx_refuses_a_detector(det_model, tmp_path):
    with pytest.raises(ValueError, match='MMSegmentation config'):
        load_tool('export_onnx').main(
            [det_model['config'], '--out', str(tmp_path / 'x.onnx'), '--part', 'segmentor']
        )


def test_export_checks_a_narrow_map_and_leaves_no_file_when_the_check_fails(
    seg_model, tmp_path, monkeypatch
):
    export_onnx = load_tool('export_onnx')
    out = tmp_path / 'narrow.onnx'
    # the parity check runs on another shape than the traced one: also for a 32-wide input
    errors = export_onnx.main([seg_model['config'], '--out', str(out), '--shape', '64', '32'])
    assert max(errors) <= 1e-4 and out.is_file()

    def disagree(module, path, shape, rtol):
        raise RuntimeError('ONNX and PyTorch differ')

    monkeypatch.setattr(export_onnx, 'verify', disagree)
    out.write_bytes(b'an earlier export')
    with pytest.raises(RuntimeError, match='differ'):
        export_onnx.main([seg_model['config'], '--out', str(out), '--shape', '64', '64'])
    assert out.read_bytes() == b'an earlier export'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['narrow.onnx']


def test_the_parity_check_fails_on_nan(seg_model, tmp_path):
    export_onnx = load_tool('export_onnx')
    module = torch.nn.Conv2d(3, 4, 3, padding=1)
    path = str(tmp_path / 'conv.onnx')
    torch.onnx.export(
        module,
        (torch.randn(1, 3, 8, 8),),
        path,
        dynamo=False,
        input_names=['input'],
        output_names=['out'],
    )
    with torch.no_grad():
        module.bias[0] = float('nan')  # PyTorch's side now gives NaN
    with pytest.raises(RuntimeError, match='differ'):
        export_onnx.verify(module, path, (1, 3, 8, 8), 1e-4)


@pytest.mark.parametrize(
    'argv, message',
    [
        (['--shape', '16', '64'], 'at least 32 each'),
        (['--part', 'segmentor', '--shape', '64', '80'], 'a multiple of 32'),
        (['--rtol', '0'], '--rtol must be positive'),
    ],
)
def test_export_arguments_are_checked_up_front(seg_model, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        load_tool('export_onnx').main(
            [seg_model['config'], '--out', str(tmp_path / 'x.onnx')] + argv
        )
    assert info.value.code == 2 and message in capsys.readouterr().err
