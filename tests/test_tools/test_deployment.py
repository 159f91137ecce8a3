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
