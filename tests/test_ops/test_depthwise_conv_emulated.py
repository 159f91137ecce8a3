"""The CUDA depthwise-conv kernels, run on the CPU under an emulation of the CUDA execution model.

csrc/depthwise_conv_emulated.cpp compiles mmunirep/ops/csrc/common/cuda's kernels and their launch
logic unchanged with the host compiler, against csrc/cuda_emulator.h:
the threads of each block run as cooperative fibers from one __syncthreads() to the next (in
increasing order by default; decreasing order and concurrent OS threads with a real barrier in the
schedule test, whose results must be bitwise equal), and its shared memory starts as NaN bytes. So
the tiling, halos, the flipped filter of the input gradient, the partitioned weight gradient and
its reduction, the shared-memory sizing and the launch limits are checked on machines without a
GPU, against an fp64 reference. Inputs sit inside NaN guard zones and the tensors the op
allocates start as NaN, so a read outside a tensor or an element never written poisons the
result. What this cannot show: speed, and anything specific to the GPU's compiler or memory
system; test_depthwise_conv.py repeats the numerical checks on a real GPU.
"""

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

from mmunirep.models import UniRepLKNet
from mmunirep.ops import DepthwiseConv2d, depthwise_conv2d
from mmunirep.ops import depthwise_conv as dw_module

from helpers import CONV_TOL as TOL
from helpers import conv_reference as reference
from helpers import randomize, rel_err


def guarded(t: torch.Tensor, guard: int = 4096) -> torch.Tensor:
    """A contiguous copy of ``t`` inside a buffer whose surroundings are NaN."""
    buf = torch.full((t.numel() + 2 * guard,), float('nan'), dtype=t.dtype)
    buf[guard : guard + t.numel()] = t.reshape(-1)
    view = buf[guard : guard + t.numel()].view(t.shape)
    assert view.is_contiguous() and view.storage_offset() == guard
    return view


def blocks_of(emu, fn):
    before = emu.blocks_run()
    out = fn()
    return out, emu.blocks_run() - before


CASES = [
    (1, 3, 5, 7, 3),  # one partial tile
    (2, 7, 33, 17, 5),  # three tile rows, odd channels
    (1, 5, 8, 8, 13),  # map smaller than the kernel
    (3, 3, 40, 37, 13),  # 3x2 tiles, partial at both edges
    (2, 4, 30, 45, 17),
    (1, 3, 12, 70, 31),  # largest kernel, 3 tile columns
    (70, 1, 9, 9, 7),  # 70 samples in 35 two-sample weight-grad items, one per part
    (9, 40, 7, 7, 13),  # one weight-grad part per channel walks 3 four-sample items, 1 partial
    (5, 40, 14, 14, 7),  # the same with 16x16 tiles: 3 two-sample items
    (2, 2, 3, 3, 13),  # map much smaller than the kernel
    (3, 5, 7, 7, 13),  # classification's 7x7: 15 planes in blocks of 8
    (2, 3, 14, 14, 13),  # classification's 14x14
    (2, 3, 12, 5, 7),
    (2, 3, 20, 64, 13),  # 16-byte aligned rows: whole runs of 8 outputs take the 16-byte stores
    (2, 3, 16, 16, 13),  # segmentation 512's 16x16: a whole-map tile filled to its edges
    (3, 2, 16, 11, 7),  # a whole-map tile filled in height only
]
COMPILED_K = (7, 13, 31)  # sizes with compile-time kernels (float, half, bfloat16)


def expected_launches(n, c, h, w, k, dtype, generic=False):
    """(forward blocks, forward threads per block, weight-grad threads per block) that the
    launch logic should pick (mmunirep/ops/csrc/common/cuda: TileShape, with_tile_shape)."""

    def tiles(th, tw):
        return -(-h // th) * -(-w // tw)

    if generic or k not in COMPILED_K or dtype == torch.float64:
        return n * c * tiles(16, 32), 128, 256
    # whole-map tiles' weight gradient: the (filter row, output row) pairs whose input row is
    # inside the map, in whole warps
    pairs = sum(1 for kh in range(k) for r in range(h) if 0 <= r + kh - k // 2 < h)
    whole_map_wgrad = -(-pairs // 32) * 32
    if k <= 13 and h <= 8 and w <= 8:  # whole 8x8 maps of 8 planes, a row per thread
        return -(-n * c // 8) * tiles(8, 8), 8 * 8, whole_map_wgrad
    if k <= 13 and h <= 16 and w <= 16:  # whole 16x16 maps of 8 planes, a row per thread
        return -(-n * c // 8) * tiles(16, 16), 8 * 16, whole_map_wgrad
    planes = 4 if k <= 13 else 2  # 16x32 tiles of 4 planes, 2 for K = 31
    return -(-n * c // planes) * tiles(16, 32), planes * 16 * 2, 16 * k


def check_against_fp64(emu, dtype, n, c, h, w, k, generic=False):
    """Run forward and backward on NaN-guarded inputs, compare with fp64, check the launches."""
    g = torch.Generator().manual_seed(n * 1000 + c * 10 + k)
    x = torch.randn(n, c, h, w, generator=g).to(dtype)
    wt = (torch.randn(c, 1, k, k, generator=g) / k).to(dtype)
    b = torch.randn(c, generator=g).to(dtype)
    gy = torch.randn(n, c, h, w, generator=g).to(dtype)
    x64, w64, b64, y64 = reference(x, wt, b)
    y64.backward(gy.double())

    emu.block_sizes()
    y, fwd_blocks = blocks_of(
        emu, lambda: emu.depthwise_conv2d_forward(guarded(x), guarded(wt), guarded(b))
    )
    gx, gw, gb = emu.depthwise_conv2d_backward(
        guarded(gy), guarded(x), guarded(wt), True, True, True
    )
    # launches: forward; input gradient; weight gradient + reduction
    fwd_threads, dgrad_threads, wgrad_threads, _ = emu.block_sizes()
    assert fwd_threads == dgrad_threads
    assert (fwd_blocks, fwd_threads, wgrad_threads) == expected_launches(
        n, c, h, w, k, dtype, generic
    )
    scale = lambda t: t.abs().max().clamp_min(1)  # noqa: E731
    for name, got, ref in (
        ('output', y, y64),
        ('input grad', gx, x64.grad),
        ('weight grad', gw, w64.grad),
        ('bias grad', gb, b64.grad),
    ):
        assert got.dtype == dtype and got.shape == ref.shape, name
        assert torch.isfinite(got).all(), (
            f'{name}: NaN, i.e. a read outside the data or an element never written'
        )
        torch.testing.assert_close(
            got.double() / scale(ref),
            ref / scale(ref),
            **TOL[dtype],
            msg=lambda m, name=name: f'{name}: {m}',
        )


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize('n, c, h, w, k', CASES)
def test_emulated_kernels_match_fp64(emu, dtype, n, c, h, w, k):
    """The kernels the op picks: compile-time K where there is one, else the run-time-K ones."""
    check_against_fp64(emu, dtype, n, c, h, w, k)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('n, c, h, w, k', [case for case in CASES if case[-1] in COMPILED_K])
def test_emulated_generic_kernels_match_fp64(emu, monkeypatch, dtype, n, c, h, w, k):
    """MMUNIREP_DWCONV_GENERIC=1: the run-time-K kernels, for sizes that have compile-time ones."""
    monkeypatch.setenv('MMUNIREP_DWCONV_GENERIC', '1')
    check_against_fp64(emu, dtype, n, c, h, w, k, generic=True)


@pytest.mark.parametrize(
    'n, c, h, w, k',
    [
        (3, 3, 40, 37, 13),
        (3, 5, 7, 7, 13),
        (2, 3, 14, 14, 13),
        (1, 3, 12, 70, 31),
        (2, 7, 33, 17, 5),
        (70, 1, 9, 9, 7),
    ],
)
def test_emulated_results_do_not_depend_on_the_schedule(emu, n, c, h, w, k):
    """The threads of a block run in increasing order, in decreasing order (cooperative, from
    barrier to barrier) and as concurrent OS threads: a missing __syncthreads() would make the
    results depend on the order; they must be bitwise equal."""
    g = torch.Generator().manual_seed(12)
    x, gy = torch.randn(n, c, h, w, generator=g), torch.randn(n, c, h, w, generator=g)
    wt, b = torch.randn(c, 1, k, k, generator=g) / k, torch.randn(c, generator=g)
    results = {}
    try:
        for schedule in ('forward', 'reverse', 'threads'):
            emu.set_schedule(schedule)
            results[schedule] = [emu.depthwise_conv2d_forward(x, wt, b)] + list(
                emu.depthwise_conv2d_backward(gy, x, wt, True, True, False)[:2]
            )
    finally:
        emu.set_schedule('forward')
    for schedule in ('reverse', 'threads'):
        for name, a, ref in zip(
            ('output', 'input grad', 'weight grad'), results[schedule], results['forward']
        ):
            assert torch.equal(a, ref), f'{name} differs between forward and {schedule} order'


def test_emulated_schedule_names_are_checked(emu):
    with pytest.raises(RuntimeError, match='expected threads, forward or reverse, got random'):
        emu.set_schedule('random')


def test_emulated_weight_grad_is_deterministic(emu):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(5, 3, 20, 40, generator=g)
    gy = torch.randn(5, 3, 20, 40, generator=g)
    wt = torch.randn(3, 1, 13, 13, generator=g)
    first = emu.depthwise_conv2d_backward(gy, x, wt, False, True, False)[1]
    second = emu.depthwise_conv2d_backward(gy, x, wt, False, True, False)[1]
    assert torch.equal(first, second)
    ref = reference(x, wt, None)
    ref[3].backward(gy.double())
    torch.testing.assert_close(first.double(), ref[1].grad, rtol=1e-5, atol=1e-4)


def test_emulated_only_requested_gradients(emu):
    x, gy = torch.randn(1, 2, 6, 6), torch.randn(1, 2, 6, 6)
    gx, gw, gb = emu.depthwise_conv2d_backward(gy, x, torch.randn(2, 1, 3, 3), True, False, False)
    assert gx is not None and gw is None and gb is None


def test_emulated_empty_batch(emu):
    x = torch.randn(0, 4, 10, 10)
    wt = torch.randn(4, 1, 5, 5)
    assert emu.depthwise_conv2d_forward(x, wt, None).shape == x.shape
    gx, gw, _ = emu.depthwise_conv2d_backward(x, x, wt, True, True, False)
    assert gx.shape == x.shape and torch.equal(gw, torch.zeros_like(wt))


def test_emulated_autograd_function_gradcheck(emulated_ext):
    """Both ways into the emulated kernels pass gradcheck in fp64: eager mode's autograd Function
    (through depthwise_conv2d) and the custom operator with its autograd formula (which
    torch.compile takes)."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    wt = torch.randn(2, 1, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(depthwise_conv2d, (x, wt, b), eps=1e-6, atol=1e-7)
    operator = torch.ops.mmunirep.depthwise_conv2d
    assert torch.autograd.gradcheck(operator, (x, wt, b), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradcheck(operator, (x, wt, None), eps=1e-6, atol=1e-7)


def test_emulated_eager_mode_takes_the_function_and_refuses_a_second_derivative(
    emulated_ext, monkeypatch
):
    """Eager mode reaches the kernels through DepthwiseConv2dFunction, not the custom operator
    (whose dispatch costs more host time: benchmarks/op_overhead_benchmark.py); a second
    derivative through it is an error, not a silent zero."""

    def operator_called(*args):
        raise AssertionError('eager mode called the custom operator')

    monkeypatch.setattr(dw_module, '_forward_op', operator_called)
    g = torch.Generator().manual_seed(15)
    x = torch.randn(1, 2, 9, 10, generator=g, requires_grad=True)
    wt = (torch.randn(2, 1, 5, 5, generator=g) / 5).requires_grad_()
    y = depthwise_conv2d(x, wt)
    torch.testing.assert_close(y, F.conv2d(x, wt, padding=2, groups=2), rtol=1e-5, atol=1e-5)
    (grad_x,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match='once_differentiable'):
        grad_x.sum().backward()


def test_emulated_custom_ops_pass_opcheck(emulated_ext):
    """torch.library.opcheck on both custom operators, on the emulated kernels: the schema, the
    fake implementations' outputs against the kernels' (shapes, strides, dtypes), the autograd
    registration and AOT dispatch with dynamic shapes; for the backward, every combination of
    requested gradients."""
    g = torch.Generator().manual_seed(12)
    x = torch.randn(2, 3, 9, 20, generator=g, requires_grad=True)
    wt = (torch.randn(3, 1, 7, 7, generator=g) / 7).requires_grad_()
    b = torch.randn(3, generator=g).requires_grad_()
    forward = torch.ops.mmunirep.depthwise_conv2d.default
    for args in ((x, wt, b), (x, wt, None), (x.detach(), wt, b), (x.detach(), wt.detach(), None)):
        torch.library.opcheck(forward, args)
    gy = torch.randn(2, 3, 9, 20, generator=g)
    backward = torch.ops.mmunirep.depthwise_conv2d_backward.default
    for needs in itertools.product((False, True), repeat=3):
        torch.library.opcheck(backward, (gy, x.detach(), wt.detach(), *needs))
        grads = backward(gy, x.detach(), wt.detach(), *needs)
        assert [t.numel() > 0 for t in grads] == list(needs)


@pytest.mark.slow
@pytest.mark.parametrize('with_cp', [False, True], ids=['plain', 'checkpointed'])
def test_emulated_backbone_compiles_into_one_graph(emulated_ext, monkeypatch, with_cp):
    """torch.compile(fullgraph=True) of a small UniRepLKNet with use_lk_op=True, its 13x13 convs
    on the emulated kernels: no graph break anywhere in the backbone (fullgraph raises on one),
    the same kernel launches as in eager mode (with gradient checkpointing: the forward again in
    the backward), and (backend aot_eager: the same operators in the same order) the same
    outputs and gradients to 1e-6 of their scale. Then torch.export of the re-parameterized
    structure: the op is in the exported graph and gives the eager outputs."""
    monkeypatch.setattr(DepthwiseConv2d, '_fast_path_refusal', lambda self, x: None)
    arch = dict(
        depths=(1, 1, 2, 1), dims=(16, 24, 32, 40), kernel_sizes=((3,), (13,), (13, 13), (13,))
    )
    model = randomize(UniRepLKNet(arch=arch, use_lk_op=True, with_cp=with_cp), seed=2)
    compiled = torch.compile(copy.deepcopy(model), fullgraph=True, backend='aot_eager')
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(13))
    runs = []
    for net in (model, compiled):
        emulated_ext.launches()
        outs = net(x)
        sum((o * (i + 1)).mean() for i, o in enumerate(outs)).backward()
        grads = {n.replace('_orig_mod.', ''): p.grad for n, p in net.named_parameters()}
        runs.append((outs, grads, len(emulated_ext.launches())))
    (outs, grads, launches), (c_outs, c_grads, c_launches) = runs
    # 4 convs: forward (again in the backward if checkpointed), input grad, weight grad, reduction
    assert launches == c_launches == 4 * (5 if with_cp else 4)
    for a, b in zip(outs, c_outs):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6 * a.abs().max().item())
    assert grads.keys() == c_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(
            c_grads[name], grad, rtol=0, atol=1e-6 * grad.abs().max().item(), msg=name
        )

    model.eval().switch_to_deploy()
    with torch.no_grad():
        expected = model(x)
    exported = torch.export.export(model, (x,))
    targets = [n.target for n in exported.graph.nodes if n.op == 'call_function']
    assert targets.count(torch.ops.mmunirep.depthwise_conv2d.default) == 4
    emulated_ext.launches()
    with torch.no_grad():
        got = exported.module()(x)
    assert len(emulated_ext.launches()) == 4
    for a, b in zip(expected, got):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6 * a.abs().max().item())


def test_emulated_op_inside_an_inductor_graph(emulated_ext):
    """torch.compile's default backend (Inductor) around the op: a large-kernel conv between
    fused pointwise ops, forward and backward, one graph, the kernels launched as in eager mode,
    results within 1e-5 of eager's scale."""
    torch.manual_seed(14)
    conv = DepthwiseConv2d(8, 13, bias=True)

    def block(x, weight, bias):
        return F.gelu(depthwise_conv2d(x * 2 + 1, weight, bias)).square()

    x = torch.randn(2, 8, 20, 36, requires_grad=True)
    runs = []
    for fn in (block, torch.compile(block, fullgraph=True)):
        for t in (x, conv.weight, conv.bias):
            t.grad = None
        emulated_ext.launches()
        y = fn(x, conv.weight, conv.bias)
        y.sum().backward()
        runs.append(
            (y.detach(), x.grad, conv.weight.grad, conv.bias.grad, len(emulated_ext.launches()))
        )
    *eager, launches = runs[0]
    *compiled, c_launches = runs[1]
    assert launches == c_launches == 4
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5 * a.abs().max().item())


def test_emulated_channels_last_and_strided_inputs(emulated_ext):
    """The Python wrapper's memory-format handling, on the emulated kernels."""
    g = torch.Generator().manual_seed(7)
    wt = torch.randn(4, 1, 7, 7, generator=g) / 7
    x = torch.randn(2, 4, 18, 21, generator=g).to(memory_format=torch.channels_last)
    y = depthwise_conv2d(x, wt)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(
        y.double(), F.conv2d(x.double(), wt.double(), padding=3, groups=4), rtol=1e-5, atol=1e-5
    )
    x_strided = torch.randn(2, 4, 18, 42, generator=g)[..., ::2]
    torch.testing.assert_close(
        depthwise_conv2d(x_strided, wt).double(),
        F.conv2d(x_strided.double(), wt.double(), padding=3, groups=4),
        rtol=1e-5,
        atol=1e-5,
    )


def test_emulated_autocast_computes_in_the_autocast_dtype(emulated_ext):
    """Under autocast the op computes in the autocast dtype, as F.conv2d does, from fp32 inputs
    and parameters; the gradients reach the fp32 parameters."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 4, 12, 20, generator=g, requires_grad=True)
    wt = (torch.randn(4, 1, 13, 13, generator=g) / 13).requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = depthwise_conv2d(x, wt)
        y_ref = F.conv2d(x, wt, padding=6, groups=4)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=2e-2, atol=2e-2)
    y.float().sum().backward()
    assert x.grad.dtype == wt.grad.dtype == torch.float32
    _, w64, _, y64 = reference(x, wt, None)
    y64.sum().backward()
    torch.testing.assert_close(
        wt.grad.double(), w64.grad, rtol=3e-2, atol=3e-2 * w64.grad.abs().max().item()
    )


def test_emulated_module_trains_like_conv2d(emulated_ext):
    """DepthwiseConv2d's forward and backward through the kernels equal nn.Conv2d's
    (the module's fast path is taken for CUDA inputs only, so this calls the function directly
    with the module's parameters)."""
    torch.manual_seed(8)
    op = DepthwiseConv2d(6, 13, bias=True)
    ref = torch.nn.Conv2d(6, 6, 13, padding=6, groups=6, bias=True)
    ref.load_state_dict(op.state_dict())
    x = torch.randn(2, 6, 20, 36)
    y = depthwise_conv2d(x, op.weight, op.bias)
    y_ref = ref(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    gy = torch.randn_like(y)
    y.backward(gy)
    y_ref.backward(gy)
    torch.testing.assert_close(op.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(op.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-4)


def test_emulated_backbone_matches_pytorch_convs(emulated_ext, monkeypatch):
    """A small UniRepLKNet (A's layout, fewer channels and blocks) with use_lk_op=True, its 13x13
    convs on the emulated kernels (stage maps of 8x8, 4x4 and 2x2: all smaller than the kernel),
    against the same network with PyTorch's convs: one training step's outputs and every
    gradient, each no further from an fp64 run than 4x the fp32 PyTorch run's own error (+1e-6
    of the outputs' / the largest gradient's scale), then the re-parameterized structure's
    outputs."""
    calls = []

    def fast_path_for_cpu(self, x):  # the module takes its CUDA path for CUDA inputs only
        calls.append(x.shape)
        return None

    monkeypatch.setattr(DepthwiseConv2d, '_fast_path_refusal', fast_path_for_cpu)
    arch = dict(
        depths=(1, 1, 2, 1), dims=(16, 24, 32, 40), kernel_sizes=((3,), (13,), (13, 13), (13,))
    )
    ref = randomize(UniRepLKNet(arch=arch, drop_path_rate=0.2), seed=1)
    ref64 = copy.deepcopy(ref).double()
    with_op = UniRepLKNet(arch=arch, drop_path_rate=0.2, use_lk_op=True)
    with_op.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(10))
    runs = []
    for model, inp in ((ref64, x.double()), (ref, x), (with_op, x)):
        torch.manual_seed(11)  # the same drop-path masks
        outs = model(inp)
        sum((o * (i + 1)).mean() for i, o in enumerate(outs)).backward()
        runs.append(
            (
                [o.detach().double() for o in outs],
                {n: p.grad.double() for n, p in model.named_parameters()},
            )
        )
    assert len(calls) == 4  # every large-kernel conv took the kernels
    (outs64, grads64), (outs32, grads32), (outs_op, grads_op) = runs

    def no_worse(ours, torch32, exact, floor, what):
        err_ours = (ours - exact).abs().max().item()
        err_torch = (torch32 - exact).abs().max().item()
        assert err_ours <= 4 * err_torch + floor, (what, err_ours, err_torch, floor)

    for i, (a, b, c) in enumerate(zip(outs_op, outs32, outs64)):
        no_worse(a, b, c, 1e-6 * c.abs().max().item(), f'output {i}')
    # gradients that are 0 in exact arithmetic (a conv's bias before a norm) are fp32 noise of
    # the size of the terms that cancel: the floor is relative to the largest gradient
    grad_scale = max(g.abs().max().item() for g in grads64.values())
    for name, exact in grads64.items():
        no_worse(grads_op[name], grads32[name], exact, 1e-6 * grad_scale, name)

    calls.clear()
    for model in (ref, with_op):
        model.eval()
        model.switch_to_deploy()
    with torch.no_grad():
        for a, b in zip(with_op(x), ref(x)):
            assert rel_err(a, b) < 1e-5
    assert len(calls) == 4 and isinstance(with_op.stages[1][0].dwconv.lk_origin, DepthwiseConv2d)


def test_emulated_launch_limits_are_enforced(emu):
    """A map needing more than 65535 tiles (grid.y) is refused with a clear error, not launched."""
    x = torch.empty(1, 1, 16 * 2048, 32 * 33)  # 2048 x 33 = 67584 tiles, 138 MB, never written
    with pytest.raises(RuntimeError, match='more than 65535 tiles'):
        emu.depthwise_conv2d_forward(x, torch.randn(1, 1, 3, 3), None)
