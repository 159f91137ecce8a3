"""same_depthwise_conv2d: F.conv2d's result, with a 13-wide kernel zero-padded to 15 on the CPU
exactly where benchmarks/cpu_depthwise_benchmark.py measured that faster."""

import contextlib
from unittest import mock

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmunirep.ops import (
    DepthwiseConv2d,
    SameDepthwiseConv2d,
    cpu_depthwise_conv,
    same_depthwise_conv2d,
)

from helpers import rel_err


@contextlib.contextmanager
def recorded_widths():
    """The kernel widths that same_depthwise_conv2d gives F.conv2d while inside."""
    widths = []
    real = F.conv2d

    def recording(inp, w, *args, **kwargs):
        widths.append(w.size(-1))
        return real(inp, w, *args, **kwargs)

    with mock.patch.object(cpu_depthwise_conv.F, 'conv2d', recording):
        yield widths


def channels_last(x):
    return x.contiguous(memory_format=torch.channels_last)


CASES = {
    'fp32 channels-last inference': (channels_last, torch.float32, False, 13, 15),
    'NCHW map': (lambda x: x, torch.float32, False, 13, 13),
    'gradient recorded': (channels_last, torch.float32, True, 13, 13),
    'bf16': (channels_last, torch.bfloat16, False, 13, 13),
    'other kernel': (channels_last, torch.float32, False, 11, 11),
}


@pytest.mark.parametrize('case', CASES)
def test_same_depthwise_conv2d_is_f_conv2d(case):
    layout, dtype, grad, k, expected_width = CASES[case]
    torch.manual_seed(0)
    x = layout(torch.randn(2, 8, 17, 11)).to(dtype).requires_grad_(grad)
    weight = torch.randn(8, 1, k, k, dtype=dtype)
    bias = torch.randn(8, dtype=dtype)
    with recorded_widths() as widths:
        out = same_depthwise_conv2d(x, weight, bias)
    ref = F.conv2d(x, weight, bias, padding=k // 2, groups=8)
    assert widths == [expected_width]
    assert out.shape == ref.shape and out.dtype == ref.dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # fp32 / bf16 rounding of reordered sums
    assert rel_err(out.float(), ref.float()) < tol
    if grad:  # the gradients flow as through F.conv2d
        g = torch.randn_like(out)
        (gx,) = torch.autograd.grad(out, x, g)
        (gref,) = torch.autograd.grad(ref, x, g)
        assert rel_err(gx, gref) < 1e-5


@pytest.mark.filterwarnings('ignore:`torch.jit.trace')
def test_tracing_keeps_the_13_wide_kernel():
    """An ONNX export or a FLOP count traces the plain convolution (onnxruntime runs 13-wide
    kernels at full speed; the count stays the model's)."""
    conv = SameDepthwiseConv2d(8, 13, bias=True).eval()
    x = channels_last(torch.randn(1, 8, 16, 16))
    with torch.no_grad(), recorded_widths() as widths:
        torch.jit.trace(conv, x, check_trace=False)
        conv(x)
    assert widths == [13, 15]  # traced, then eager


def test_modules_keep_the_conv_state_dict():
    """SameDepthwiseConv2d (and the op's module, which falls back to it on the CPU) store what
    an nn.Conv2d stores, so checkpoints load either way."""
    plain = nn.Conv2d(8, 8, 13, padding=6, groups=8)
    for module in (SameDepthwiseConv2d(8, 13, bias=True), DepthwiseConv2d(8, 13, bias=True)):
        module.load_state_dict(plain.state_dict())
        x = channels_last(torch.randn(1, 8, 20, 20))
        with torch.no_grad():
            assert rel_err(module(x), plain(x)) < 1e-5
    with pytest.raises(ValueError, match='odd kernel_size, got 12'):
        SameDepthwiseConv2d(8, 12)


def test_changed_attributes_fall_back_to_nn_conv2d():
    """A conv whose stride or padding was changed after construction is no longer a 'same'
    depthwise conv: it runs as nn.Conv2d does."""
    conv = SameDepthwiseConv2d(8, 13)
    conv.stride = (2, 2)
    x = channels_last(torch.randn(1, 8, 20, 20))
    with torch.no_grad():
        out = conv(x)
        ref = F.conv2d(x, conv.weight, None, stride=2, padding=6, groups=8)
    assert out.shape == (1, 8, 10, 10) and rel_err(out, ref) < 1e-6


@pytest.mark.parametrize('kernel, padded_apart', [(3, False), (7, False), (9, True), (13, True)])
def test_an_onnx_export_pads_large_kernels_with_a_conv_of_their_own(tmp_path, kernel, padded_apart):
    """In an ONNX export, kernels of 9 and up (where onnxruntime's padded path was measured
    slower) take their zero padding from a 1x1 depthwise conv by ones, then run unpadded;
    smaller ones keep their padding. onnxruntime gives F.conv2d's result on another size than the
    traced one, within fp32 rounding."""
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    conv = SameDepthwiseConv2d(16, kernel, bias=True).eval()
    path = str(tmp_path / 'dw.onnx')
    with torch.no_grad():
        torch.onnx.export(
            conv, (torch.randn(1, 16, 14, 18),), path, dynamo=False, opset_version=17,
            input_names=['x'], dynamic_axes={'x': {0: 'n', 2: 'h', 3: 'w'}},
        )  # fmt: skip
    convs = []
    for node in onnx.load(path).graph.node:
        if node.op_type == 'Constant':  # the ones
            continue
        assert node.op_type == 'Conv', node.op_type
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        convs.append((tuple(attrs['kernel_shape']), tuple(attrs['pads']), attrs['group']))
    p = kernel // 2
    if padded_apart:
        assert convs == [((1, 1), (p,) * 4, 16), ((kernel, kernel), (0,) * 4, 16)]
    else:
        assert convs == [((kernel, kernel), (p,) * 4, 16)]
    x = torch.randn(2, 16, 23, 9)
    (out,) = ort.InferenceSession(path, providers=['CPUExecutionProvider']).run(
        None, {'x': x.numpy()}
    )
    with torch.no_grad():
        ref = F.conv2d(x, conv.weight, conv.bias, padding=p, groups=16)
    assert rel_err(torch.from_numpy(out), ref) < 1e-5
