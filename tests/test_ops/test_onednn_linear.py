"""cpu_linear: F.linear's result (and F.gelu's after it), through oneDNN on the CPU exactly where
benchmarks/cpu_linear_benchmark.py measured it, and F.linear everywhere else."""

import contextlib
from unittest import mock

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmunirep.ops import cpu_linear, onednn_linear, takes_onednn_linear

from helpers import rel_err

needs_onednn = pytest.mark.skipif(
    onednn_linear._onednn_linear_op() is None, reason='torch built without oneDNN'
)


@contextlib.contextmanager
def counted_f_linear():
    """How many times cpu_linear falls back to F.linear while inside."""
    calls = []
    real = F.linear

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    with mock.patch.object(onednn_linear.F, 'linear', counting):
        yield calls


@needs_onednn
@pytest.mark.parametrize('gelu', [False, True])
@pytest.mark.parametrize('with_bias', [False, True])
@pytest.mark.parametrize('shape', [(1, 7, 5, 24), (3, 24), (2, 9, 24)])
def test_onednn_path_is_f_linear(shape, with_bias, gelu):
    torch.manual_seed(0)
    x = torch.randn(shape) * 2
    linear = nn.Linear(24, 40, bias=with_bias)
    with torch.no_grad():
        with counted_f_linear() as calls:
            out = cpu_linear(x, linear.weight, linear.bias, gelu=gelu)
        ref = linear(x)
        ref = F.gelu(ref) if gelu else ref
    assert calls == [], 'fp32 inference on the CPU must take oneDNN'
    assert out.shape == ref.shape and out.dtype == ref.dtype
    # fp32 rounding of reordered sums; the GELU is the exact (erf) one, not the tanh form, which
    # differs by up to 5e-4 of the largest value on these inputs
    assert rel_err(out, ref) < 2e-6


@needs_onednn
def test_non_contiguous_weight_and_input():
    """A transposed weight (as from a fold) and a permuted map give F.linear's result."""
    torch.manual_seed(1)
    x = torch.randn(1, 24, 6, 5).permute(0, 2, 3, 1)
    weight = torch.randn(24, 40).t()
    with torch.no_grad():
        assert rel_err(cpu_linear(x, weight), F.linear(x, weight)) < 2e-6


FALLBACKS = {
    'gradient recorded': dict(grad=True),
    'bf16': dict(dtype=torch.bfloat16),
    'cpu autocast': dict(autocast=True),
}


@pytest.mark.parametrize('case', FALLBACKS)
def test_falls_back_to_f_linear(case):
    opts = FALLBACKS[case]
    torch.manual_seed(2)
    dtype = opts.get('dtype', torch.float32)
    x = torch.randn(4, 24, dtype=dtype).requires_grad_(opts.get('grad', False))
    linear = nn.Linear(24, 40).to(dtype)
    autocast = torch.autocast('cpu', dtype=torch.bfloat16, enabled=opts.get('autocast', False))
    grad_mode = torch.enable_grad() if opts.get('grad') else torch.no_grad()
    with grad_mode, autocast:
        assert not takes_onednn_linear(x, linear.weight)
        with counted_f_linear() as calls:
            out = cpu_linear(x, linear.weight, linear.bias, gelu=True)
        ref = F.gelu(linear(x))
    assert calls == [1]
    assert out.dtype == ref.dtype and torch.equal(out, ref)
    if opts.get('grad'):  # the gradients flow as through F.linear
        g = torch.randn_like(out)
        (gx,) = torch.autograd.grad(out, x, g)
        (gref,) = torch.autograd.grad(ref, x, g)
        assert torch.equal(gx, gref)


@pytest.mark.filterwarnings('ignore:`torch.jit.trace')
def test_tracing_sees_f_linear():
    """An ONNX export or a FLOP count traces F.linear and F.gelu (the oneDNN operator has no ONNX
    form)."""

    class Layer(nn.Linear):
        def forward(self, x):
            return cpu_linear(x, self.weight, self.bias, gelu=True)

    layer = Layer(24, 40).eval()
    x = torch.randn(2, 24)
    with torch.no_grad():
        traced = torch.jit.trace(layer, x, check_trace=False)
        kinds = {node.kind() for node in traced.graph.nodes()}
        assert 'aten::linear' in kinds and 'aten::gelu' in kinds
        assert not any(kind.startswith('mkldnn::') for kind in kinds)
        assert rel_err(traced(x), F.gelu(F.linear(x, layer.weight, layer.bias))) < 2e-6


def test_torch_without_onednn_falls_back():
    x = torch.randn(3, 24)
    weight = torch.randn(40, 24)
    with torch.no_grad(), mock.patch.object(torch.backends.mkldnn, 'is_available', lambda: False):
        assert not takes_onednn_linear(x, weight)
        with counted_f_linear() as calls:
            out = cpu_linear(x, weight)
    assert calls == [1] and torch.equal(out, F.linear(x, weight))
