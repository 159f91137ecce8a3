"""The depthwise-conv op: the fallback everywhere, the compiled extension's CPU path where it is
built, and its kernels where a GPU is present (marked ``gpu``)."""

import copy
import subprocess
import types
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmunirep.models import UniRepLKNet
from mmunirep.ops import (
    DepthwiseConv2d,
    cuda_archs,
    depthwise_conv2d,
    ext_available,
    missing_kernels,
)
from mmunirep.ops import depthwise_conv as dw_module

from helpers import CONV_TOL as TOL
from helpers import ROOT, randomize
from helpers import conv_reference as reference

CUDA = torch.cuda.is_available() and ext_available()


def needs_cuda_op(test):
    """Marks a test ``gpu`` and skips it without a GPU and the built extension."""
    skip = pytest.mark.skipif(not CUDA, reason='needs a GPU and the built CUDA extension')
    return pytest.mark.gpu(skip(test))


def tap_sum_reference(x, w, b=None):
    """The depthwise "same" conv in fp64 with autograd, as the sum over the kernel's taps of
    shifted slices of the zero-padded input: independent of F.conv2d, which the fallback calls.
    Returns (x64, w64, b64, y64)."""
    k, (h, wd) = w.shape[-1], x.shape[-2:]
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_() if b is not None else None
    padded = F.pad(x64, (k // 2,) * 4)
    y = sum(
        padded[:, :, i : i + h, j : j + wd] * w64[:, 0, i, j].reshape(1, -1, 1, 1)
        for i in range(k)
        for j in range(k)
    )
    return x64, w64, b64, y if b64 is None else y + b64.reshape(1, -1, 1, 1)


@pytest.mark.parametrize('k, bias', [(3, False), (7, True), (13, True), (31, False)])
def test_fallback_is_the_depthwise_conv(k, bias):
    """The fallback's output and gradients against an fp64 tap sum, within fp32 rounding (of
    each tensor's largest value)."""
    torch.manual_seed(k)
    op = DepthwiseConv2d(6, k, bias=bias)
    assert op.padding == (k // 2, k // 2) and op.groups == 6 and op.stride == (1, 1)
    if bias:  # nn.Conv2d's init gives a bias as small as the weights: make it count
        nn.init.uniform_(op.bias, -1.0, 1.0)
    x = torch.randn(2, 6, 9, 11, requires_grad=True)
    y = op(x)
    x64, w64, b64, y64 = tap_sum_reference(x, op.weight, op.bias)
    g = torch.randn_like(y)
    y.backward(g)
    y64.backward(g.double())
    pairs = [(y, y64), (x.grad, x64.grad), (op.weight.grad, w64.grad)]
    if bias:
        pairs.append((op.bias.grad, b64.grad))
    for got, ref in pairs:
        scale = ref.abs().max()
        torch.testing.assert_close(got.double() / scale, ref / scale, **TOL[torch.float32])


@pytest.mark.parametrize('built', [True, False], ids=['extension-built', 'no-extension'])
def test_fallback_warns_once_with_the_build_command(monkeypatch, built):
    """A CPU input warns at its first forward; a missing extension is said when the module is
    built (a forward under torch.compile cannot warn); either way once per process."""
    monkeypatch.setattr(dw_module, '_warned', False)
    monkeypatch.setattr(dw_module, '_ext', types.SimpleNamespace(with_cuda=True) if built else None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        op = DepthwiseConv2d(4, 5)
        assert len(caught) == (0 if built else 1)
        op(torch.randn(1, 4, 8, 8))
        op(torch.randn(1, 4, 8, 8))
        DepthwiseConv2d(4, 5)
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert 'FORCE_CUDA=1' in str(caught[0].message)
    assert ('input on the CPU' if built else 'extension not built') in str(caught[0].message)


def test_fallback_compiles_into_one_graph(monkeypatch):
    """On the fallback path (CPU input) too, torch.compile(fullgraph=True) traces a backbone with
    use_lk_op=True without a graph break (the fallback's warning would be one) and gives eager
    mode's outputs (eager mode without gradients runs the blocks' inference form, the compiled
    graph their plain form). Random BN statistics, GRN parameters and layer scales make every
    block count: a fresh model's 1e-6 layer scales would hide a wrong block below the tolerance."""
    monkeypatch.setattr(dw_module, '_warned', False)
    arch = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), kernel_sizes=((3,), (13,), (13,), (13,)))
    torch.manual_seed(0)
    model = UniRepLKNet(arch=arch, use_lk_op=True)
    model.init_weights()
    randomize(model).eval()
    x = torch.randn(1, 3, 64, 64)
    compiled = torch.compile(model, fullgraph=True, backend='aot_eager')
    with torch.no_grad():
        got = compiled(x)  # first: an eager call before it would have warned already
        ref = model(x)
    assert len(got) == len(ref) == 4
    for a, b in zip(ref, got):
        # fp32 rounding of the two forms' reordered products (about 3e-7 of the largest value)
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5 * a.abs().max().item())


@pytest.mark.parametrize(
    'spec, capability, native, at_all',
    [
        ('8.0;8.6;9.0+PTX', (8, 0), True, True),
        ('8.0;8.6;9.0+PTX', (8, 9), True, True),  # RTX 40xx / L4: 8.6's machine code
        ('8.0;8.6;9.0+PTX', (9, 0), True, True),
        ('8.0;8.6;9.0+PTX', (10, 0), False, True),  # B200: the driver compiles 9.0's PTX
        ('8.0;8.6;9.0+PTX', (12, 0), False, True),  # RTX 50xx
        ('8.0;8.6;9.0+PTX', (7, 5), False, False),  # T4: PTX runs on newer GPUs only
        ('8.0;8.6;9.0', (10, 0), False, False),  # without PTX nothing runs on Blackwell
        ('9.0a', (9, 0), True, True),
        ('9.0a+PTX', (10, 0), False, False),  # arch-specific code is for 9.0 alone
        ('7.5 12.0+PTX', (12, 1), True, True),  # space-separated, as torch accepts
    ],
)
def test_cuda_arch_rules(spec, capability, native, at_all):
    archs = cuda_archs.parse_arch_list(spec)
    assert any(a.runs_natively_on(capability) for a in archs) == native
    assert any(a.runs_on(capability) for a in archs) == at_all


@pytest.mark.parametrize(
    'visible, newest, expected',
    [
        ([], (12, 1), '8.0;8.6;9.0+PTX'),  # no GPU at build time (CI)
        ([(8, 9), (9, 0)], (12, 1), '8.0;8.6;9.0+PTX'),  # covered natively already
        ([(12, 0), (7, 5), (12, 0)], (12, 1), '8.0;8.6;9.0+PTX;7.5;12.0'),
        ([(13, 0)], (12, 1), '8.0;8.6;9.0+PTX;12.1'),  # clamped to what the toolkit builds
    ],
)
def test_default_arch_list_adds_the_visible_gpus(visible, newest, expected):
    assert cuda_archs.arch_list_for(visible, newest=newest) == expected
    with pytest.raises(ValueError, match='expected CUDA architectures like'):
        cuda_archs.parse_arch_list('8.0;Ampere')


def run_setup_py(monkeypatch, hip=None, arch_list=None):
    """setup.py's ``setup(...)`` arguments for ``FORCE_CUDA=1``, as a build would get them."""
    import os
    import runpy

    import setuptools
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None:
        pytest.skip('no CUDA toolkit: setup.py cannot describe the extension')
    root = ROOT
    captured = {}
    monkeypatch.setattr(setuptools, 'setup', lambda **kwargs: captured.update(kwargs))
    monkeypatch.setattr(torch.version, 'hip', hip)
    monkeypatch.setenv('FORCE_CUDA', '1')
    monkeypatch.delenv('MMUNIREP_WITH_OPS', raising=False)
    if arch_list is None:
        monkeypatch.delenv('TORCH_CUDA_ARCH_LIST', raising=False)
    else:
        monkeypatch.setenv('TORCH_CUDA_ARCH_LIST', arch_list)
    monkeypatch.chdir(root)
    runpy.run_path(os.path.join(root, 'setup.py'))
    return captured


@pytest.mark.skipif(torch.cuda.is_available(), reason='the default without a visible GPU')
def test_setup_builds_for_the_default_architectures_or_the_users(monkeypatch):
    import os

    ext_modules = run_setup_py(monkeypatch)['ext_modules']
    assert [e.name for e in ext_modules] == ['mmunirep._ext']
    assert os.environ['TORCH_CUDA_ARCH_LIST'] == cuda_archs.DEFAULT_CUDA_ARCHS
    assert any(s.endswith('depthwise_conv_cuda.cu') for s in ext_modules[0].sources)
    run_setup_py(monkeypatch, arch_list='7.5;12.0')
    assert os.environ['TORCH_CUDA_ARCH_LIST'] == '7.5;12.0'


def test_setup_skips_the_extension_on_rocm(monkeypatch):
    """The kernels have not been ported to ROCm (torch would hipify them): the package installs
    without the extension (the op falls back) instead of failing to build."""
    assert run_setup_py(monkeypatch, hip='6.4.0')['ext_modules'] == []


class FakeCudaInput:
    """What DepthwiseConv2d's fast-path check reads of a CUDA input (no GPU here)."""

    is_cuda = True
    dtype = torch.float32
    device = torch.device('cuda', 1)

    def dim(self):
        return 4


@pytest.mark.parametrize('has_kernels', [True, False], ids=['kernels', 'no-kernels'])
def test_a_gpu_without_kernels_in_the_build_falls_back_with_the_command(monkeypatch, has_kernels):
    """A GPU that the build's TORCH_CUDA_ARCH_LIST does not cover fails at its first launch ("no
    kernel image is available"): the module asks the extension first, once per device, and
    takes F.conv2d with a message that names the GPU, the build's architectures and the
    command that builds for it."""
    asked = []

    def ask(index):
        asked.append(index)
        return '' if has_kernels else 'no kernel image is available for execution on the device'

    monkeypatch.setattr(
        dw_module,
        '_ext',
        types.SimpleNamespace(with_cuda=True, cuda_archs='800,860,900', missing_kernels=ask),
    )
    monkeypatch.setattr(dw_module, '_missing_kernels_on', {})
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda i: f'NVIDIA GeForce RTX 5090 #{i}')
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda i: (12, 0))
    op = DepthwiseConv2d(4, 13)
    refusals = [op._fast_path_refusal(FakeCudaInput()) for _ in range(3)]
    assert asked == [1], 'asked once per device'
    if has_kernels:
        assert refusals == [None] * 3
        return
    assert len(set(refusals)) == 1
    message = refusals[0]
    for part in (
        'NVIDIA GeForce RTX 5090 #1',
        'compute capability 12.0',
        'made for 8.0, 8.6, 9.0',
        'no kernel image',
        'TORCH_CUDA_ARCH_LIST="12.0" bash scripts/build_ops.sh',
    ):
        assert part in message, (part, message)
    # an extension built before this check (no missing_kernels): assumed to have the kernels
    monkeypatch.setattr(dw_module, '_ext', types.SimpleNamespace(with_cuda=True))
    monkeypatch.setattr(dw_module, '_missing_kernels_on', {})
    assert op._fast_path_refusal(FakeCudaInput()) is None
    monkeypatch.setattr(dw_module, '_ext', None)
    assert missing_kernels(0) == 'extension not built'


def test_the_kernel_check_is_a_constant_under_torch_compile(monkeypatch):
    """Dynamo cannot trace the extension's call: the check is asked once at trace time and
    becomes a constant of the graph (no graph break with fullgraph=True)."""
    asked = []
    monkeypatch.setattr(
        dw_module,
        '_ext',
        types.SimpleNamespace(
            with_cuda=True,
            cuda_archs='900',
            # opaque to Dynamo, as the extension's pybind function is
            missing_kernels=torch.compiler.disable(lambda i: asked.append(i) or 'none'),
        ),
    )
    monkeypatch.setattr(dw_module, '_missing_kernels_on', {})
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda i: 'GPU')
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda i: (7, 5))

    def fn(x):
        return x + 1 if missing_kernels(0) else x - 1

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend='eager')
    x = torch.randn(3)
    for _ in range(2):
        torch.testing.assert_close(compiled(x), x + 1, rtol=0, atol=0)
    assert asked == [0]


def test_state_dict_interchanges_with_conv2d():
    """nn.Conv2d's state dict loads into the module (strictly) and computes the same conv, and
    the reverse: both against the fp64 tap sum of the weights loaded."""
    torch.manual_seed(12)
    op = DepthwiseConv2d(8, 13, bias=True)
    conv = nn.Conv2d(8, 8, 13, padding=6, groups=8, bias=True)
    assert {k: v.shape for k, v in op.state_dict().items()} == {
        k: v.shape for k, v in conv.state_dict().items()
    }
    x = torch.randn(1, 8, 20, 20)
    for src, dst in ((conv, op), (op, copy.deepcopy(conv))):
        with torch.no_grad():
            for p in src.parameters():
                p.uniform_(-0.5, 0.5)  # not the values dst holds
        dst.load_state_dict(src.state_dict())
        *_, ref = tap_sum_reference(x, src.weight, src.bias)
        with torch.no_grad():
            out = dst(x)
        torch.testing.assert_close(
            out.double() / ref.abs().max(), ref.detach() / ref.abs().max(), **TOL[torch.float32]
        )
    with pytest.raises(ValueError, match='DepthwiseConv2d needs an odd kernel_size, got 4'):
        DepthwiseConv2d(8, 4)


def test_backbone_with_the_op_builds_and_reparameterizes():
    torch.manual_seed(0)
    ref = UniRepLKNet(arch='a')
    with_op = UniRepLKNet(arch='a', use_lk_op=True)
    assert any(isinstance(m, DepthwiseConv2d) for m in with_op.modules())
    with_op.load_state_dict(ref.state_dict())  # same keys and shapes
    # random BN statistics, GRN parameters and layer scales (a fresh model's 1e-6 layer scales
    # would hide any error in the blocks' folding)
    ref.init_weights()
    randomize(ref, seed=1)
    with_op.load_state_dict(ref.state_dict())
    ref.eval()
    with_op.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = ref(x)
        with_op.switch_to_deploy()
        after = with_op(x)
    assert isinstance(with_op.stages[1][0].dwconv.lk_origin, DepthwiseConv2d)
    assert with_op.stages[1][0].dwconv.lk_origin.bias is not None
    assert len(after) == len(before) == 4
    for a, b in zip(after, before):
        assert ((a - b).abs().max() / b.abs().max()).item() < 1e-5


# ----------------------------------------------------------------------------------------------
# GPU: the compiled kernels against an fp64 reference
# ----------------------------------------------------------------------------------------------
@needs_cuda_op
@pytest.mark.parametrize('generic', [False, True], ids=['picked', 'run-time-K'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    'n, c, h, w, k',
    [
        (1, 3, 5, 7, 3),
        (2, 7, 33, 17, 5),
        (4, 16, 20, 20, 7),
        (1, 5, 8, 8, 13),
        (3, 9, 40, 37, 13),
        (2, 4, 30, 45, 17),
        (1, 3, 12, 70, 31),
        (64, 2, 9, 9, 13),
        (2, 11, 3, 3, 13),
        (3, 5, 7, 7, 13),
        (2, 3, 14, 14, 13),
        (2, 3, 16, 16, 13),
        (3, 2, 16, 11, 7),
        (2, 3, 100, 168, 13),
        (2, 6, 25, 42, 13),
        (70, 1, 9, 9, 7),
    ],
)
def test_cuda_op_matches_fp64(monkeypatch, generic, dtype, n, c, h, w, k):
    """The kernels the op picks (compile-time K for 7, 13, 31; whole small maps of 8 planes,
    filled or not; 16x32 tiles whose right half or bottom rows lie past the map), and the
    run-time-K kernels forced by MMUNIREP_DWCONV_GENERIC=1."""
    if generic:
        monkeypatch.setenv('MMUNIREP_DWCONV_GENERIC', '1')
    torch.manual_seed(n * 1000 + c * 10 + k)
    x = torch.randn(n, c, h, w, device='cuda', dtype=dtype, requires_grad=True)
    wt = (torch.randn(c, 1, k, k, device='cuda') / k).to(dtype).requires_grad_()
    b = torch.randn(c, device='cuda', dtype=dtype, requires_grad=True)
    y = depthwise_conv2d(x, wt, b)
    x64, w64, b64, y64 = reference(x, wt, b)
    g = torch.randn_like(y)
    y.backward(g)
    y64.backward(g.double())
    scale = lambda t: t.abs().max().clamp_min(1)  # noqa: E731
    for got, ref in ((y, y64), (x.grad, x64.grad), (wt.grad, w64.grad), (b.grad, b64.grad)):
        torch.testing.assert_close(got.double() / scale(ref), ref / scale(ref), **TOL[dtype])


@needs_cuda_op
def test_cuda_op_channels_last_and_noncontiguous():
    torch.manual_seed(1)
    x = torch.randn(2, 8, 24, 24, device='cuda').to(memory_format=torch.channels_last)
    wt = torch.randn(8, 1, 13, 13, device='cuda') / 13
    y = depthwise_conv2d(x, wt)
    assert y.is_contiguous(memory_format=torch.channels_last)
    ref = F.conv2d(x.double(), wt.double(), padding=6, groups=8)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
    x_nc = torch.randn(2, 8, 24, 48, device='cuda')[..., ::2]  # a strided view
    torch.testing.assert_close(
        depthwise_conv2d(x_nc, wt).double(),
        F.conv2d(x_nc.double(), wt.double(), padding=6, groups=8),
        rtol=1e-5,
        atol=1e-5,
    )


@needs_cuda_op
def test_cuda_op_gradcheck_double():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 6, 5, device='cuda', dtype=torch.float64, requires_grad=True)
    wt = torch.randn(3, 1, 5, 5, device='cuda', dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, device='cuda', dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(depthwise_conv2d, (x, wt, b))


@needs_cuda_op
def test_cuda_op_weight_grad_is_deterministic():
    torch.manual_seed(3)
    x = torch.randn(8, 16, 50, 50, device='cuda', requires_grad=True)
    wt = torch.randn(16, 1, 13, 13, device='cuda', requires_grad=True)
    grads = []
    for _ in range(2):
        wt.grad = None
        depthwise_conv2d(x, wt).sum().backward()
        grads.append(wt.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


class CountingExt:
    """The extension, with the calls into its two kernel entry points recorded (with the dtypes
    they got): a result of the right value could also come from the F.conv2d fallback."""

    def __init__(self, ext):
        self.ext = ext
        self.calls = []

    def __getattr__(self, name):  # with_cuda, missing_kernels, cuda_archs, ...
        return getattr(self.ext, name)

    def depthwise_conv2d_forward(self, x, weight, bias):
        self.calls.append(('forward', x.dtype, weight.dtype, bias.dtype))
        return self.ext.depthwise_conv2d_forward(x, weight, bias)

    def depthwise_conv2d_backward(self, grad_out, x, weight, *needs):
        self.calls.append(('backward', grad_out.dtype, x.dtype, weight.dtype))
        return self.ext.depthwise_conv2d_backward(grad_out, x, weight, *needs)


@needs_cuda_op
def test_module_uses_the_kernels_under_autocast(monkeypatch):
    """Under fp16 autocast the module's forward and backward run the extension's kernels (once
    each, in fp16), and the output and the fp32 gradients are within fp16's tolerance of fp64."""
    ext = CountingExt(dw_module._ext)
    monkeypatch.setattr(dw_module, '_ext', ext)  # looked up at call time
    torch.manual_seed(7)
    op = DepthwiseConv2d(8, 13, bias=True).cuda()
    x = torch.randn(2, 8, 30, 30, device='cuda', requires_grad=True)
    with torch.autocast('cuda', dtype=torch.float16):
        y = op(x)
    assert y.dtype == torch.float16
    half = torch.float16
    assert ext.calls == [('forward', half, half, half)]
    g = torch.randn_like(y)
    y.backward(g)
    assert ext.calls[1:] == [('backward', half, half, half)]
    assert x.grad.dtype == op.weight.grad.dtype == op.bias.grad.dtype == torch.float32
    x64, w64, b64, y64 = reference(x, op.weight, op.bias)
    y64.backward(g.double())
    scale = lambda t: t.abs().max().clamp_min(1)  # noqa: E731
    pairs = ((y, y64), (x.grad, x64.grad), (op.weight.grad, w64.grad), (op.bias.grad, b64.grad))
    for got, ref in pairs:
        torch.testing.assert_close(got.double() / scale(ref), ref / scale(ref), **TOL[half])


# ----------------------------------------------------------------------------------------------
# the compiled extension on the CPU (CI builds it with scripts/build_ops.sh): bindings and checks
# ----------------------------------------------------------------------------------------------
needs_ext = pytest.mark.skipif(
    dw_module._ext is None, reason='extension not built (bash scripts/build_ops.sh)'
)


@needs_cuda_op
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_cuda_op_under_torch_compile(dtype):
    """torch.compile's default backend (Inductor's Triton kernels around the op) on a GPU, one
    graph (fullgraph): our forward and weight-gradient kernels run (the profiler sees them) and
    the output and gradients are within the dtype's tolerance of eager mode's (under bf16
    autocast for bf16)."""
    pytest.importorskip('triton', reason='Inductor needs Triton on a GPU')
    torch.manual_seed(5)
    op = DepthwiseConv2d(16, 13, bias=True).cuda()
    x = torch.randn(2, 16, 40, 56, device='cuda', requires_grad=True)

    def block(inp):
        with torch.autocast('cuda', dtype=dtype, enabled=dtype != torch.float32):
            return F.gelu(op(inp * 2 + 1)).float().square()

    runs = []
    for fn in (block, torch.compile(block, fullgraph=True)):
        for t in (x, op.weight, op.bias):
            t.grad = None
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            y = fn(x)
            y.sum().backward()
            torch.cuda.synchronize()
        names = {e.key for e in prof.key_averages()}
        assert any('depthwise_conv2d_forward' in n for n in names), names
        assert any('depthwise_conv2d_weight_grad' in n for n in names), names
        runs.append([y.detach(), x.grad, op.weight.grad, op.bias.grad])
    for eager, compiled in zip(*runs):
        scale = eager.abs().max()
        torch.testing.assert_close(compiled / scale, eager / scale, **TOL[dtype])


@needs_cuda_op
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_cuda_op_in_a_cuda_graph(dtype):
    """The op's forward and all three gradients captured in a CUDA graph (as
    torch.compile(mode='reduce-overhead') and hand-made graphs do: no host synchronization, the
    current stream, the caching allocator) and replayed on new data give bitwise the results of
    eager calls on that data."""
    torch.manual_seed(6)
    shape = (2, 24, 50, 84)
    static = dict(
        x=torch.randn(shape, device='cuda', dtype=dtype, requires_grad=True),
        w=(torch.randn(24, 1, 13, 13, device='cuda') / 13).to(dtype).requires_grad_(),
        b=torch.randn(24, device='cuda', dtype=dtype, requires_grad=True),
        g=torch.randn(shape, device='cuda', dtype=dtype),
    )

    def run(x, w, b, g):
        y = depthwise_conv2d(x, w, b)
        return (y, *torch.autograd.grad(y, (x, w, b), g))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as PyTorch's docs ask
        for _ in range(2):
            run(**static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run(**static)
    for _ in range(2):
        fresh = {
            k: torch.randn_like(v, dtype=torch.float32).to(dtype) / (13 if k == 'w' else 1)
            for k, v in static.items()
        }
        with torch.no_grad():
            for k, v in fresh.items():
                static[k].copy_(v)
        graph.replay()
        eager = run(**{k: v.requires_grad_(k != 'g') for k, v in fresh.items()})
        for name, a, b_ in zip(
            ('output', 'input grad', 'weight grad', 'bias grad'), captured, eager
        ):
            assert torch.equal(a, b_), name


@needs_ext
def test_extension_cpu_path_matches_conv2d():
    ext = dw_module._ext
    torch.manual_seed(4)
    x = torch.randn(2, 5, 11, 9, dtype=torch.float64)
    w = torch.randn(5, 1, 7, 7, dtype=torch.float64)
    b = torch.randn(5, dtype=torch.float64)
    y = ext.depthwise_conv2d_forward(x, w, b)
    x_ref, w_ref, b_ref = (t.clone().requires_grad_() for t in (x, w, b))
    y_ref = F.conv2d(x_ref, w_ref, b_ref, padding=3, groups=5)
    torch.testing.assert_close(y, y_ref.detach(), rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    y_ref.backward(g)
    gx, gw, gb = ext.depthwise_conv2d_backward(g, x, w, True, True, True)
    for got, ref in ((gx, x_ref.grad), (gw, w_ref.grad), (gb, b_ref.grad)):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


@needs_ext
def test_extension_uses_the_shared_cxx_runtime():
    """The extension must take the C++ runtime (__cxa_throw, __gxx_personality_v0) from the
    libstdc++.so torch uses, not carry a copy: built with a toolchain that links libstdc++
    statically (the GPU machines' /opt/gcc), every TORCH_CHECK error was a segmentation fault.
    setup.py links the process's libstdc++.so.6 first (shared_cxx_runtime)."""
    import shutil

    nm = shutil.which('nm')
    if nm is None:
        pytest.skip('needs binutils nm')
    symbols = subprocess.run(
        [nm, '-D', dw_module._ext.__file__], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    # nm lines: '[address] TYPE name[@version]'; U = imported, T = defined here
    wanted = ('__cxa_throw', '__cxa_begin_catch', '__gxx_personality_v0')
    runtime = {}
    for fields in (line.split() for line in symbols):
        name = fields[-1].split('@')[0] if len(fields) >= 2 else None
        if name in wanted:
            runtime[name] = fields[-2]
    assert runtime, 'the extension throws no C++ exception at all?'
    assert set(runtime.values()) == {'U'}, f'the extension defines its own C++ runtime: {runtime}'


@needs_ext
@pytest.mark.parametrize(
    'make, match',
    [
        (lambda: (torch.randn(2, 4, 8, 8), torch.randn(4, 1, 4, 4), None), 'odd square kernel'),
        (lambda: (torch.randn(2, 4, 8, 8), torch.randn(3, 1, 5, 5), None), 'weight'),
        (lambda: (torch.randn(4, 8, 8), torch.randn(4, 1, 5, 5), None), '4-D'),
        (lambda: (torch.randn(2, 4, 8, 8), torch.randn(4, 1, 5, 5).double(), None), 'weight is'),
        (lambda: (torch.randn(2, 4, 8, 8), torch.randn(4, 1, 33, 33), None), '1 to 31'),
        (lambda: (torch.randn(2, 4, 8, 8), torch.randn(4, 1, 5, 5), torch.randn(3)), 'bias'),
    ],
)
def test_extension_rejects_bad_arguments(make, match):
    x, w, b = make()
    with pytest.raises(RuntimeError, match=match):
        dw_module._ext.depthwise_conv2d_forward(x, w, b)


@needs_ext
@pytest.mark.sass
def test_extension_reports_the_architectures_it_was_built_for():
    """``_ext.cuda_archs`` (nvcc's __CUDA_ARCH_LIST__, which the fallback's message quotes) lists
    exactly the architectures whose machine code or PTX the binary holds (cuobjdump)."""
    import re

    import sass_report

    cuobjdump = sass_report.find_cuobjdump()
    if cuobjdump is None:
        pytest.skip('no cuobjdump (pip install -r requirements/dev.txt)')
    ext = dw_module._ext
    found = set()
    for flag in ('--list-elf', '--list-ptx'):
        out = subprocess.run(
            [cuobjdump, flag, ext.__file__], capture_output=True, text=True, check=True
        ).stdout
        found |= {int(m) * 10 for m in re.findall(r'\.sm_(\d+)a?\.(?:cubin|ptx)', out)}
    reported = {int(v) for v in ext.cuda_archs.split(',')}
    assert found and reported == found, (ext.cuda_archs, found)


@needs_ext
@pytest.mark.skipif(torch.cuda.is_available(), reason='the answer without a GPU')
def test_extension_kernel_check_without_a_gpu_is_an_error():
    with pytest.raises(RuntimeError, match=r'no CUDA device 0 \(0 visible\)'):
        dw_module._ext.missing_kernels(0)


@needs_cuda_op
def test_cuda_extension_has_kernels_for_this_gpu():
    """The check the module makes before its first launch, on a GPU the build covers (the GPU
    sessions build for it), and the device's architecture among those reported."""
    index = torch.cuda.current_device()
    dw_module._missing_kernels_on.clear()
    assert missing_kernels(index) == ''
    major, minor = torch.cuda.get_device_capability(index)
    built = [int(v) for v in dw_module._ext.cuda_archs.split(',')]
    assert any(v // 100 == major and v % 100 // 10 <= minor for v in built), built
    x = torch.randn(1, 3, 20, 20, device='cuda')
    op = DepthwiseConv2d(3, 13).cuda()
    assert op._fast_path_refusal(x) is None
    torch.testing.assert_close(
        op(x), F.conv2d(x, op.weight, None, padding=6, groups=3), rtol=1e-5, atol=1e-5
    )
