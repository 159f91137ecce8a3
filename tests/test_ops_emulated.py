"""The CUDA depthwise-conv kernels, run on the CPU under an emulation of the CUDA execution model.

tests/csrc/depthwise_conv_emulated.cpp compiles ops/csrc/common/cuda/depthwise_conv_kernel.cuh and
its launch logic (depthwise_conv_launch.cuh) unchanged with the host compiler, against
tests/csrc/cuda_emulator.h: the threads of each block run as cooperative fibers from one
__syncthreads() to the next (in increasing order by default; decreasing order and concurrent OS
threads with a real barrier in the schedule test, whose results must be bitwise equal), and its
shared memory starts as NaN bytes. So the
tiling, halos, the flipped filter of the input gradient, the partitioned weight gradient and its
reduction, the shared-memory sizing and the launch limits are checked here, on machines without a
GPU, against an fp64 reference. Inputs sit inside NaN guard zones and the tensors the op
allocates start as NaN, so a read outside a tensor or an element never written poisons the
result. What this cannot show: speed, and anything specific to the GPU's compiler or
memory system; tests/test_ops.py repeats the numerical checks on a real GPU.
"""
import copy
import itertools
import os
import types
import warnings

import pytest
import torch
import torch.nn.functional as F
from test_backbone import randomize, rel_err
from test_ops import (TOL, assert_same_weight_grad_as_fp64, assert_weight_grad_near_fp64,
                      reference)
from torch.utils.cpp_extension import load

from mmunirep.models import UniRepLKNet
from mmunirep.ops import DepthWiseConv2dImplicitGEMM, autotune, depthwise_conv2d
from mmunirep.ops import depthwise_conv as dw_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = {**TOL, torch.float64: dict(rtol=1e-10, atol=1e-10)}


@pytest.fixture(scope='module')
def emu():
    """The emulated kernels, compiled on first use (~30 s; torch caches the build)."""
    return load('mmunirep_dwconv_emulated',
                [os.path.join(ROOT, 'tests', 'csrc', 'depthwise_conv_emulated.cpp')],
                extra_include_paths=[os.path.join(ROOT, 'tests', 'csrc'),
                                     os.path.join(ROOT, 'ops', 'csrc', 'common', 'cuda')],
                extra_cflags=['-O2', '-std=c++20', '-Wno-unknown-pragmas'])


@pytest.fixture
def emulated_ext(emu, monkeypatch):
    """Route mmunirep.ops' autograd Function through the emulated kernels."""
    monkeypatch.setattr(dw_module, '_ext', emu)
    return emu


def guarded(t: torch.Tensor, guard: int = 4096) -> torch.Tensor:
    """A contiguous copy of ``t`` inside a buffer whose surroundings are NaN."""
    buf = torch.full((t.numel() + 2 * guard,), float('nan'), dtype=t.dtype)
    buf[guard:guard + t.numel()] = t.reshape(-1)
    view = buf[guard:guard + t.numel()].view(t.shape)
    assert view.is_contiguous() and view.storage_offset() == guard
    return view


def blocks_of(emu, fn):
    before = emu.blocks_run()
    out = fn()
    return out, emu.blocks_run() - before


CASES = [
    (1, 3, 5, 7, 3),      # one partial tile
    (2, 7, 33, 17, 5),    # three tile rows, odd channels
    (1, 5, 8, 8, 13),     # map smaller than the kernel
    (3, 3, 40, 37, 13),   # 3x2 tiles, partial at both edges
    (2, 4, 30, 45, 17),
    (1, 3, 12, 70, 31),   # largest kernel, 3 tile columns
    (70, 1, 9, 9, 7),     # 70 samples in 35 two-sample weight-grad items, one per part
    (9, 40, 7, 7, 13),    # one weight-grad part per channel walks 3 four-sample items, 1 partial
    (5, 40, 14, 14, 7),   # the same with 16x16 tiles: 3 two-sample items
    (2, 2, 3, 3, 13),     # map much smaller than the kernel
    (3, 5, 7, 7, 13),     # classification's 7x7: 15 planes in blocks of 8
    (2, 3, 14, 14, 13),   # classification's 14x14
    (2, 3, 12, 5, 7),
    (2, 3, 20, 64, 13),   # 16-byte aligned rows: whole runs of 8 outputs take the 16-byte stores
    (2, 3, 16, 16, 13),   # segmentation 512's 16x16: a whole-map tile filled to its edges
    (3, 2, 16, 11, 7),    # a whole-map tile filled in height only
]
COMPILED_K = (7, 13, 31)  # sizes with compile-time kernels (float, half, bfloat16)


def expected_launches(n, c, h, w, k, dtype, generic=False, fwd_tile=None):
    """(forward blocks, forward threads per block, weight-grad threads per block) that the
    launch logic should pick (ops/csrc/common/cuda: TileShape, with_tile_shape; fwd_tile: the
    (rows, planes) of 32-column tiles that MMUNIREP_DWCONV_FWD_TILE asks for)."""
    def tiles(th, tw):
        return -(-h // th) * -(-w // tw)
    if generic or k not in COMPILED_K or dtype == torch.float64:
        return n * c * tiles(16, 32), 128, 256
    if fwd_tile and k <= 13 and (h > 16 or w > 16):  # 2 column groups of 16 outputs per row
        th, planes = fwd_tile
        return -(-n * c // planes) * tiles(th, 32), planes * th * 2, 16 * k
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


def check_against_fp64(emu, dtype, n, c, h, w, k, generic=False, fwd_tile=None):
    """Run forward and backward on NaN-guarded inputs, compare with fp64, check the launches;
    return the output and the input gradient."""
    g = torch.Generator().manual_seed(n * 1000 + c * 10 + k)
    x = torch.randn(n, c, h, w, generator=g).to(dtype)
    wt = (torch.randn(c, 1, k, k, generator=g) / k).to(dtype)
    b = torch.randn(c, generator=g).to(dtype)
    gy = torch.randn(n, c, h, w, generator=g).to(dtype)
    x64, w64, b64, y64 = reference(x, wt, b)
    y64.backward(gy.double())

    emu.block_sizes()
    y, fwd_blocks = blocks_of(emu, lambda: emu.depthwise_conv2d_forward(
        guarded(x), guarded(wt), guarded(b)))
    gx, gw, gb = emu.depthwise_conv2d_backward(guarded(gy), guarded(x), guarded(wt), True, True,
                                               True)
    # launches: forward; input gradient; weight gradient + reduction
    fwd_threads, dgrad_threads, wgrad_threads, _ = emu.block_sizes()
    assert fwd_threads == dgrad_threads
    assert (fwd_blocks, fwd_threads, wgrad_threads) == expected_launches(n, c, h, w, k, dtype,
                                                                         generic, fwd_tile)
    scale = lambda t: t.abs().max().clamp_min(1)  # noqa: E731
    for name, got, ref in (('output', y, y64), ('input grad', gx, x64.grad),
                           ('weight grad', gw, w64.grad), ('bias grad', gb, b64.grad)):
        assert got.dtype == dtype and got.shape == ref.shape, name
        assert torch.isfinite(got).all(), \
            f'{name}: NaN, i.e. a read outside the data or an element never written'
        torch.testing.assert_close(got.double() / scale(ref), ref / scale(ref), **TOL[dtype],
                                   msg=lambda m: f'{name}: {m}')  # noqa: B023
    return y, gx


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


@pytest.mark.parametrize('variant, rows, planes', [('16x32x2', 16, 2), ('32x32x2', 32, 2)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('n, c, h, w, k', [
    case for case in CASES if case[-1] in (7, 13) and (case[2] > 16 or case[3] > 16)] + [
    (2, 5, 25, 42, 13),   # detection's stage-4 map: a 32-row tile past its bottom
    (3, 3, 33, 17, 7),    # one column group of 16 past the right edge, 2 tile rows of 32
    (1, 3, 70, 40, 13)])  # 3 tall tiles, the last mostly past the map
def test_emulated_forward_tile_variants(emu, monkeypatch, variant, rows, planes, dtype, n, c, h,
                                        w, k):
    """MMUNIREP_DWCONV_FWD_TILE: the forward and input gradient of maps larger than 16x16 at
    K = 7 and 13 on 16x32 tiles of 2 planes or 32x32 tiles of 2 planes, against fp64 and
    bitwise against the default tiles (each output sums the same products in the same order)."""
    default = check_against_fp64(emu, dtype, n, c, h, w, k)
    monkeypatch.setenv('MMUNIREP_DWCONV_FWD_TILE', variant)
    tiled = check_against_fp64(emu, dtype, n, c, h, w, k, fwd_tile=(rows, planes))
    for name, a, b in zip(('output', 'input grad'), tiled, default):
        assert torch.equal(a, b), name


def test_emulated_forward_tile_variant_names_are_checked(emu, monkeypatch):
    monkeypatch.setenv('MMUNIREP_DWCONV_FWD_TILE', '64x64')
    x = torch.randn(1, 2, 20, 20)
    with pytest.raises(RuntimeError, match="expected 16x32x2 or 32x32x2 .or unset., got '64x64'"):
        emu.depthwise_conv2d_forward(x, torch.randn(2, 1, 13, 13), None)


def forward_and_input_grad(emu, n, c, h, w, k, dtype):
    """The forward output and input gradient of fresh random data, their launches ((kernel,
    shared memory bytes) each) and blocks run."""
    g = torch.Generator().manual_seed(n * 100 + h * 10 + k)
    x, gy = torch.randn(n, c, h, w, generator=g).to(dtype), torch.randn(n, c, h, w, generator=g)
    wt, b = torch.randn(c, 1, k, k, generator=g) / k, torch.randn(c, generator=g)
    gy, wt, b = gy.to(dtype), wt.to(dtype), b.to(dtype)
    emu.launches()
    (y, gx), blocks = blocks_of(emu, lambda: (
        emu.depthwise_conv2d_forward(guarded(x), guarded(wt), guarded(b)),
        emu.depthwise_conv2d_backward(guarded(gy), guarded(x), guarded(wt), True, False,
                                      False)[0]))
    return (y, gx), emu.launches(), blocks


@pytest.mark.parametrize('tile, rows, planes', [('', 16, 4), ('16x32x2', 16, 2),
                                                ('32x32x2', 32, 2)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
@pytest.mark.parametrize('n, c, h, w, k', [case for case in CASES if case[-1] in COMPILED_K] + [
    (2, 5, 25, 42, 13),   # detection's stage-4 map
    (4, 9, 40, 70, 7),    # 9 plane groups of 4 x 3 x 3 tiles: 81 items over 4 blocks
    (1, 3, 70, 40, 13)])
def test_emulated_pipelined_forward(emu, monkeypatch, tile, rows, planes, dtype, n, c, h, w, k):
    """MMUNIREP_DWCONV_FWD_PIPELINE=1: fp32 at K = 7 and 13 takes the pipelined forward and
    input-gradient kernel on the map's tile (the chosen one for maps larger than 16x16, else the
    whole-map tile), with two staging buffers filled by cp.async: one wave of blocks (the 2
    emulated SMs times the blocks whose shared memory fits), each walking every blocks-th
    (plane group, tile) item. Its outputs are bitwise the default kernel's (which
    test_emulated_kernels_match_fp64 checks against fp64). Other dtypes and kernel sizes keep
    their kernel, and its result."""
    monkeypatch.setenv('MMUNIREP_DWCONV_FWD_TILE', tile)
    plain, plain_launches, plain_blocks = forward_and_input_grad(emu, n, c, h, w, k, dtype)
    monkeypatch.setenv('MMUNIREP_DWCONV_FWD_PIPELINE', '1')
    piped, piped_launches, piped_blocks = forward_and_input_grad(emu, n, c, h, w, k, dtype)
    applies = dtype == torch.float32 and k in (7, 13)
    assert len(plain_launches) == len(piped_launches) == 2  # forward, input gradient
    for (plain_kernel, plain_smem), (piped_kernel, piped_smem) in zip(plain_launches,
                                                                      piped_launches):
        assert (piped_kernel != plain_kernel) == applies
        assert piped_smem == (2 * plain_smem if applies else plain_smem)
    if applies:
        cols, groups = 32, 2  # column groups of 16 outputs
        if h <= 16 and w <= 16:  # whole 8x8 or 16x16 maps of 8 planes, a row per thread
            rows = cols = 8 if h <= 8 and w <= 8 else 16
            planes, groups = 8, 1
        threads, smem = planes * rows * groups, piped_launches[0][1]
        slots = 2 * min(32, 2048 // threads, 100 * 1024 // smem)  # EmuLaunch's occupancy
        items = -(-n * c // planes) * -(-h // rows) * -(-w // cols)
        assert piped_blocks == 2 * min(items, slots)
    else:
        assert piped_blocks == plain_blocks
    for name, a, b in zip(('output', 'input grad'), piped, plain):
        assert torch.isfinite(a).all(), name
        assert torch.equal(a, b), name


def test_emulated_pipelined_forward_walks_several_items_per_block(emu, monkeypatch):
    """The cases above include blocks that walk many items, so that both buffers are filled and
    reused: (4, 9, 40, 70, 7) on the default tile is 81 items on 6 blocks (3 of 28 KiB per
    emulated SM of 100 KiB), 13 or 14 each."""
    monkeypatch.setenv('MMUNIREP_DWCONV_FWD_PIPELINE', '1')
    _, launches, blocks = forward_and_input_grad(emu, 4, 9, 40, 70, 7, torch.float32)
    assert [smem // 1024 for _, smem in launches] == [28, 28] and blocks == 2 * 6


@pytest.mark.parametrize('kind, schedule, failure', [
    ('early_read', 'reverse', 'nan'),     # copies land at the wait: a read before it sees NaN
    ('early_read', 'threads', 'nan'),
    ('overwrite', 'forward', 'sum'),      # copies land when issued: the others' sums change
    ('never_waited', 'forward', 'never waited for'),
    ('never_waited', 'reverse', 'never waited for')])
def test_emulated_cp_async_misuse_is_caught(emu, kind, schedule, failure):
    """The emulated cp.async (the kernels' async_copy) fails where the GPU could give a wrong
    result: a read of the buffer before the copies are waited for, copies into a buffer that
    other threads still read, copies never waited for. Used rightly, the 64 threads' sums are
    the sum of the 64 elements copied, in every schedule."""
    src = torch.randn(128, generator=torch.Generator().manual_seed(5))
    right = src[:64].sum()
    try:
        for each in ('forward', 'reverse', 'threads'):
            emu.set_schedule(each)
            torch.testing.assert_close(emu.async_misuse('right', src), right.expand(64),
                                       rtol=1e-6, atol=1e-5)
        emu.set_schedule(schedule)
        if failure == 'never waited for':
            with pytest.raises(RuntimeError, match='cp.async copies it never waited for'):
                emu.async_misuse(kind, src)
            return
        out = emu.async_misuse(kind, src)
        if failure == 'nan':
            assert torch.isnan(out).any()
        else:
            assert torch.isfinite(out).all()
            assert (out - right).abs().max() > 1e-3
    finally:
        emu.set_schedule('forward')


def weight_grads(emu, n, c, h, w, k, dtype):
    """The weight gradient of fresh random data, and its launch: (kernel address, shared memory
    bytes)."""
    g = torch.Generator().manual_seed(n * 100 + h * 10 + k)
    x, gy = torch.randn(n, c, h, w, generator=g), torch.randn(n, c, h, w, generator=g)
    wt = torch.randn(c, 1, k, k, generator=g) / k
    x, gy, wt = x.to(dtype), gy.to(dtype), wt.to(dtype)
    emu.launches()
    gw = emu.depthwise_conv2d_backward(guarded(gy), guarded(x), guarded(wt), False, True,
                                       False)[1]
    wgrad_launch, _reduce = emu.launches()
    return gw, wgrad_launch, (x, gy, wt)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('n, c, h, w, k', [case for case in CASES if case[-1] in COMPILED_K])
def test_emulated_pipelined_weight_grad(emu, monkeypatch, dtype, n, c, h, w, k):
    """MMUNIREP_DWCONV_PIPELINE=1: maps larger than 16x16 (tiles with a halo) take the pipelined
    weight-gradient kernel, with two sets of staging buffers; it sums the same products in the
    same order, so its result is bitwise the default kernel's, and that matches fp64. Whole-map
    tiles keep their kernel. Both with 3 parts per channel (the rule's count follows from each
    kernel's occupancy)."""
    monkeypatch.setenv('MMUNIREP_DWCONV_WGRAD_PARTS', '3')
    plain, (plain_kernel, plain_smem), (x, gy, wt) = weight_grads(emu, n, c, h, w, k, dtype)
    monkeypatch.setenv('MMUNIREP_DWCONV_PIPELINE', '1')
    piped, (piped_kernel, piped_smem), _ = weight_grads(emu, n, c, h, w, k, dtype)
    large = not (k <= 13 and h <= 16 and w <= 16)
    assert (piped_kernel != plain_kernel) == large
    if large:  # staged input (16 + K - 1 rows of pitch 32 + K) and gradient (16 x 33) tiles, or
        # the row reduction's 8 x K*K partials where they are more
        staged = (16 + k - 1) * (32 + k) + 16 * 33
        assert (plain_smem, piped_smem) == (4 * max(staged, 8 * k * k),
                                            4 * max(2 * staged, 8 * k * k))
    assert_same_weight_grad_as_fp64(piped, plain, x, wt, gy)


# the tensor-core weight gradient's block (TensorCoreWgrad<K>): threads (7, 7 and 8 warps of 1, 2
# and 4 filter rows) and shared memory bytes, the larger of the staged half-precision tiles (16 +
# K - 1 input rows of pitch 48, 48, 80 and 16 gradient rows of 48) and the warps' fp32 scratch
# for one filter row's 16 x 16 NF sums (NF = 2, 2, 3)
TC_LAUNCH = {7: (224, 4 * 7 * 512), 13: (224, 4 * 7 * 512), 31: (256, 4 * 8 * 768)}


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('n, c, h, w, k', [case for case in CASES if case[-1] in COMPILED_K])
def test_emulated_tensor_core_weight_grad(emu, monkeypatch, dtype, n, c, h, w, k):
    """MMUNIREP_DWCONV_WGRAD_TC=1: half and bfloat16 maps larger than 16x16 take the tensor-core
    weight gradient (wmma, emulated on whole matrices), which matches fp64 within the dtype's
    tolerance; fp32 and whole-map tiles keep their kernel and its result, bitwise."""
    default, (default_kernel, _), (x, gy, wt) = weight_grads(emu, n, c, h, w, k, dtype)
    emu.block_sizes()
    monkeypatch.setenv('MMUNIREP_DWCONV_WGRAD_TC', '1')
    got, (kernel, smem), _ = weight_grads(emu, n, c, h, w, k, dtype)
    threads, _reduce = emu.block_sizes()
    tensor_cores = dtype != torch.float32 and not (k <= 13 and h <= 16 and w <= 16)
    assert (kernel != default_kernel) == tensor_cores
    if tensor_cores:
        assert (threads, smem) == TC_LAUNCH[k]
        assert_weight_grad_near_fp64(got, x, wt, gy)
    else:
        assert torch.equal(got, default)


def test_emulated_tensor_core_weight_grad_does_not_depend_on_the_schedule(emu, monkeypatch):
    """The tensor-core weight gradient in the three schedules of the emulator: bitwise equal (its
    barriers before staging, after staging and around the scratch of the final sums)."""
    monkeypatch.setenv('MMUNIREP_DWCONV_WGRAD_TC', '1')
    g = torch.Generator().manual_seed(21)
    x, gy = (torch.randn(2, 3, 20, 40, generator=g).half() for _ in range(2))
    wt = (torch.randn(3, 1, 7, 7, generator=g) / 7).half()
    results = {}
    try:
        for schedule in ('forward', 'reverse', 'threads'):
            emu.set_schedule(schedule)
            results[schedule] = emu.depthwise_conv2d_backward(gy, x, wt, False, True, False)[1]
    finally:
        emu.set_schedule('forward')
    assert torch.equal(results['reverse'], results['forward'])
    assert torch.equal(results['threads'], results['forward'])
    assert_weight_grad_near_fp64(results['forward'], x, wt, gy)


# the tensor-core forward's block (TensorCoreFwd<K>): shared memory bytes of the K Toeplitz
# matrices (32 rows of pitch 24), the staged tile (32 + K - 1 rows of pitch 48) and the 4 warps'
# fp32 scratch (16 rows of pitch 20), all in half precision but the scratch
TC_FWD_SMEM = {k: 2 * (k * 32 * 24 + (32 + k - 1) * 48) + 4 * 4 * 16 * 20 for k in (7, 13)}


def forward_passes(emu, n, c, h, w, k, dtype):
    """The output and input gradient of fresh random data, their launches, and the data."""
    g = torch.Generator().manual_seed(n * 100 + h * 10 + k)
    x, gy = (torch.randn(n, c, h, w, generator=g).to(dtype) for _ in range(2))
    wt = (torch.randn(c, 1, k, k, generator=g) / k).to(dtype)
    b = torch.randn(c, generator=g).to(dtype)
    emu.launches()
    y = emu.depthwise_conv2d_forward(guarded(x), guarded(wt), guarded(b))
    gx = emu.depthwise_conv2d_backward(guarded(gy), guarded(x), guarded(wt), True, False,
                                       False)[0]
    return (y, gx), emu.launches(), (x, wt, b, gy)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('n, c, h, w, k', [case for case in CASES if case[-1] in COMPILED_K] + [
    (2, 3, 33, 17, 7), (1, 2, 70, 40, 13)])
def test_emulated_tensor_core_forward(emu, monkeypatch, dtype, n, c, h, w, k):
    """MMUNIREP_DWCONV_FWD_TC=1: half and bfloat16 maps larger than 16x16 at K = 7 and 13 take
    the tensor-core forward and input gradient (Toeplitz matrices of the filter rows, emulated
    wmma), which match fp64 within the dtype's tolerance; fp32, whole-map tiles and K = 31 keep
    their kernels and results, bitwise."""
    default, default_launches, _ = forward_passes(emu, n, c, h, w, k, dtype)
    monkeypatch.setenv('MMUNIREP_DWCONV_FWD_TC', '1')
    got, launches, (x, wt, b, gy) = forward_passes(emu, n, c, h, w, k, dtype)
    tensor_cores = dtype != torch.float32 and k <= 13 and (h > 16 or w > 16)
    for (kernel, smem), (default_kernel, _) in zip(launches, default_launches):
        assert (kernel != default_kernel) == tensor_cores
        assert not tensor_cores or smem == TC_FWD_SMEM[k]
    if not tensor_cores:
        assert all(torch.equal(a, d) for a, d in zip(got, default))
        return
    x64, w64, b64, y64 = reference(x, wt, b)
    y64.backward(gy.double())
    for name, out, ref in (('output', got[0], y64), ('input grad', got[1], x64.grad)):
        assert torch.isfinite(out).all(), name
        scale = ref.abs().max()
        torch.testing.assert_close(out.double() / scale, ref.detach() / scale, **TOL[dtype],
                                   msg=lambda m: f'{name}: {m}')  # noqa: B023


def test_emulated_tensor_core_forward_does_not_depend_on_the_schedule(emu, monkeypatch):
    """The tensor-core forward and input gradient in the emulator's three schedules: bitwise
    equal (its barriers around the staged tile)."""
    monkeypatch.setenv('MMUNIREP_DWCONV_FWD_TC', '1')
    g = torch.Generator().manual_seed(22)
    x, gy = (torch.randn(2, 3, 40, 37, generator=g).bfloat16() for _ in range(2))
    wt = (torch.randn(3, 1, 13, 13, generator=g) / 13).bfloat16()
    b = torch.randn(3, generator=g).bfloat16()
    results = {}
    try:
        for schedule in ('forward', 'reverse', 'threads'):
            emu.set_schedule(schedule)
            results[schedule] = (emu.depthwise_conv2d_forward(x, wt, b),
                                 emu.depthwise_conv2d_backward(gy, x, wt, True, False, False)[0])
    finally:
        emu.set_schedule('forward')
    for schedule in ('reverse', 'threads'):
        assert all(torch.equal(a, ref) for a, ref in zip(results[schedule], results['forward']))


@pytest.mark.parametrize('name', ['MMUNIREP_DWCONV_WGRAD_TC', 'MMUNIREP_DWCONV_FWD_TC'])
@pytest.mark.parametrize('value', ['yes', '2', 'true'])
def test_emulated_tensor_core_switches_are_checked(emu, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    x = torch.randn(1, 2, 20, 20).half()
    with pytest.raises(RuntimeError, match=f"{name}: expected 1 or 0 .or unset., got '{value}'"):
        emu.depthwise_conv2d_backward(x, x, torch.randn(2, 1, 7, 7).half(), True, True, False)


@pytest.mark.parametrize('kind, message', [
    ('partial', r'made by 16 of its 32 lanes'),
    ('divergent', r'call 0 of warp 0 differs between lanes'),
    ('misaligned', r'must be 32-byte aligned')])
def test_emulated_wmma_misuse_is_caught(emu, kind, message):
    """The emulated wmma fails, as the GPU would misbehave, where a kernel calls it with part of a
    warp, with different pointers in one warp or with a misaligned fragment pointer."""
    emu.wmma_misuse('right')  # all lanes, one aligned pointer: no error
    with pytest.raises(RuntimeError, match=message):
        emu.wmma_misuse(kind)


@pytest.mark.parametrize('n, c, h, w, k', [
    (3, 3, 40, 37, 13), (3, 5, 7, 7, 13), (2, 3, 14, 14, 13), (1, 3, 12, 70, 31),
    (2, 7, 33, 17, 5), (70, 1, 9, 9, 7)])
@pytest.mark.parametrize('pipelined', [False, True], ids=['plain', 'pipelined'])
def test_emulated_results_do_not_depend_on_the_schedule(emu, monkeypatch, pipelined, n, c, h, w,
                                                        k):
    """The threads of a block run in increasing order, in decreasing order (cooperative, from
    barrier to barrier) and as concurrent OS threads: a missing __syncthreads() would make the
    results depend on the order; they must be bitwise equal. Also with the pipelined weight
    gradient and forward (MMUNIREP_DWCONV_PIPELINE=1, MMUNIREP_DWCONV_FWD_PIPELINE=1), whose one
    barrier per item must be enough; the emulated cp.async of the forward lands its copies when
    issued in one schedule and when waited for in the others (cuda_emulator.h)."""
    if pipelined:
        monkeypatch.setenv('MMUNIREP_DWCONV_PIPELINE', '1')
        monkeypatch.setenv('MMUNIREP_DWCONV_FWD_PIPELINE', '1')
    g = torch.Generator().manual_seed(12)
    x, gy = torch.randn(n, c, h, w, generator=g), torch.randn(n, c, h, w, generator=g)
    wt, b = torch.randn(c, 1, k, k, generator=g) / k, torch.randn(c, generator=g)
    results = {}
    try:
        for schedule in ('forward', 'reverse', 'threads'):
            emu.set_schedule(schedule)
            results[schedule] = [emu.depthwise_conv2d_forward(x, wt, b)] + list(
                emu.depthwise_conv2d_backward(gy, x, wt, True, True, False)[:2])
    finally:
        emu.set_schedule('forward')
    for schedule in ('reverse', 'threads'):
        for name, a, ref in zip(('output', 'input grad', 'weight grad'), results[schedule],
                                results['forward']):
            assert torch.equal(a, ref), f'{name} differs between forward and {schedule} order'


def test_emulated_schedule_names_are_checked(emu):
    with pytest.raises(RuntimeError, match='expected threads, forward or reverse, got random'):
        emu.set_schedule('random')


@pytest.mark.parametrize('groups, tiles_h, tiles_w, parts', [
    (3, 3, 2, 5),    # a step of 0 groups, 2 tile rows and 1 column: both carries
    (4, 2, 3, 4),    # 1 tile row and 1 column per step, carries into the group
    (2, 1, 3, 2),    # one tile row: every carry from the columns is into the group
    (5, 4, 5, 23),   # 1 group, 0 rows and 3 columns per step
    (7, 1, 1, 3),    # whole-map tiles: one tile per plane
    (2, 2, 2, 8),    # one item per part
    (1, 3, 3, 1)])   # one part walks all
def test_emulated_item_walks_cover_every_item_once(emu, groups, tiles_h, tiles_w, parts):
    """ItemGrid / ItemWalk (the weight gradient's items, walked with additions and carries
    instead of divisions): block `part` takes items part, part + parts, ... of the channel's
    groups x tiles_h x tiles_w, numbered by group, then tile row, then tile column."""
    walks = emu.item_walks(groups, tiles_h, tiles_w, parts)
    number = lambda n, th, tw: (n * tiles_h + th) * tiles_w + tw  # noqa: E731
    items = groups * tiles_h * tiles_w
    assert len(walks) == parts
    for part, walk in enumerate(walks):
        assert [number(*item) for item in walk] == list(range(part, items, parts)), part
        assert all(0 <= th < tiles_h and 0 <= tw < tiles_w for _, th, tw in walk), walk


def modelled_waves_and_items(items, channels, slots, parts):
    """weight_grad_parts' model of the grid's time in half items (depthwise_conv_launch.cuh)."""
    return -(-channels * parts // slots) * (2 * -(-items // parts) + 1)


@pytest.mark.parametrize('items, channels, slots', [
    (128, 384, 1320),  # K = 7, (64, 384, 32, 32) on an H100: 10 blocks of 112 threads per SM
    (128, 384, 1584),  # the same with 12 (40 registers since the item walk has no division)
    (84, 192, 660),    # K = 13, detection's (2, 192, 100, 168): 5 blocks of 208 threads per SM
    (8, 768, 660), (16, 768, 3300), (3, 5, 8), (40, 3, 1000), (1, 7, 1), (200, 1, 2),
    (10, 2, 7)])  # 3 and 10 parts tie: 3
def test_emulated_weight_grad_parts_minimize_the_wave_model(emu, items, channels, slots):
    """weight_grad_parts: between 1 and min(items, 64), the fewest parts of least modelled time
    (waves x the most items of a block, plus half an item per block). Where all of a channel's
    items fit in one wave of blocks of one item each, one part per item."""
    parts = emu.weight_grad_parts(items, channels, slots)
    assert 1 <= parts <= min(items, 64)
    costs = {p: modelled_waves_and_items(items, channels, slots, p)
             for p in range(1, min(items, 64) + 1)}
    assert costs[parts] == min(costs.values())
    assert all(costs[p] > costs[parts] for p in range(1, parts)), 'not the fewest parts'
    if channels * items <= slots and items <= 64:
        assert parts == items
    if (items, channels, slots) == (128, 384, 1320):
        # the former rule's 7 parts (2.04 waves of 19 items) against 2.91 waves of 13
        assert parts == 10 and costs[7] > costs[10]
    if (items, channels, slots) == (128, 384, 1584):  # 7: 1.70 waves of 19; 4: 0.97 of 32
        assert parts == 4 and costs[7] > costs[4]


def test_emulated_weight_grad_parts_reject_bad_input(emu):
    with pytest.raises(RuntimeError, match=r'items 0, channels 4, slots 10 \(each at least 1'):
        emu.weight_grad_parts(0, 4, 10)


@pytest.mark.parametrize('forced', ['1', '3', '64', 'legacy'])
def test_emulated_forced_weight_grad_parts(emu, monkeypatch, forced):
    """MMUNIREP_DWCONV_WGRAD_PARTS (the benchmark's --parts-sweep): the weight gradient runs
    with the parts asked for (at most one per item), and matches fp64 and the default's result
    to the rounding of a different summation order."""
    n, c, h, w, k = 5, 3, 40, 37, 13  # 5 groups of 3 x 2 tiles: 30 items per channel
    default, _, (x, gy, wt) = weight_grads(emu, n, c, h, w, k, torch.float32)
    emu.grid_y()
    monkeypatch.setenv('MMUNIREP_DWCONV_WGRAD_PARTS', forced)
    got, _, _ = weight_grads(emu, n, c, h, w, k, torch.float32)
    wgrad_parts, reduce_blocks = emu.grid_y()
    # legacy: one wave of 2048 // 208 = 9 blocks on each of the emulator's 2 SMs, over 3 channels
    assert wgrad_parts == {'1': 1, '3': 3, '64': 30, 'legacy': 6}[forced]
    assert reduce_blocks == 1
    scale = assert_weight_grad_near_fp64(got, x, wt, gy)
    torch.testing.assert_close(got / scale, default / scale, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('value', ['0', '65', 'ten', '4x'])
def test_emulated_forced_weight_grad_parts_are_checked(emu, monkeypatch, value):
    monkeypatch.setenv('MMUNIREP_DWCONV_WGRAD_PARTS', value)
    x = torch.randn(1, 2, 20, 20)
    with pytest.raises(RuntimeError, match=f"expected a count from 1 to 64 or legacy .or unset.,"
                                           f" got '{value}'"):
        emu.depthwise_conv2d_backward(x, x, torch.randn(2, 1, 13, 13), False, True, False)


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


def test_emulated_eager_mode_takes_the_function_and_refuses_a_second_derivative(emulated_ext,
                                                                                monkeypatch):
    """Eager mode reaches the kernels through DepthwiseConv2dFunction, not the custom operator
    (whose dispatch costs more: benchmarks/op_overhead_benchmark.py); a second derivative through
    it is an error, not a silent zero."""
    def operator_called(*args):
        raise AssertionError('eager mode called the custom operator')

    monkeypatch.setattr(dw_module, '_forward_op', operator_called)
    g = torch.Generator().manual_seed(15)
    x = torch.randn(1, 2, 9, 10, generator=g, requires_grad=True)
    wt = (torch.randn(2, 1, 5, 5, generator=g) / 5).requires_grad_()
    y = depthwise_conv2d(x, wt)
    torch.testing.assert_close(y, F.conv2d(x, wt, padding=2, groups=2), rtol=1e-5, atol=1e-5)
    (grad_x, ) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
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


@pytest.mark.parametrize('with_cp', [False, True], ids=['plain', 'checkpointed'])
def test_emulated_backbone_compiles_into_one_graph(emulated_ext, monkeypatch, with_cp):
    """torch.compile(fullgraph=True) of a small UniRepLKNet with use_lk_op=True, its 13x13 convs
    on the emulated kernels: no graph break anywhere in the backbone (fullgraph raises on one),
    the same kernel launches as in eager mode (with gradient checkpointing: the forward again in
    the backward), and (backend aot_eager: the same operators in the same order) the same
    outputs and gradients to 1e-6 of their scale. Then torch.export of the re-parameterized
    structure: the op is in the exported graph and gives the eager outputs."""
    monkeypatch.setattr(DepthWiseConv2dImplicitGEMM, '_fast_path_refusal', lambda self, x: None)
    arch = dict(depths=(1, 1, 2, 1), dims=(16, 24, 32, 40),
                kernel_sizes=((3, ), (13, ), (13, 13), (13, )))
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
        torch.testing.assert_close(c_grads[name], grad, rtol=0,
                                   atol=1e-6 * grad.abs().max().item(), msg=name)

    model.eval().switch_to_deploy()
    with torch.no_grad():
        expected = model(x)
    exported = torch.export.export(model, (x, ))
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
    conv = DepthWiseConv2dImplicitGEMM(8, 13, bias=True)

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
        runs.append((y.detach(), x.grad, conv.weight.grad, conv.bias.grad,
                     len(emulated_ext.launches())))
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
    torch.testing.assert_close(y.double(), F.conv2d(x.double(), wt.double(), padding=3, groups=4),
                               rtol=1e-5, atol=1e-5)
    x_strided = torch.randn(2, 4, 18, 42, generator=g)[..., ::2]
    torch.testing.assert_close(
        depthwise_conv2d(x_strided, wt).double(),
        F.conv2d(x_strided.double(), wt.double(), padding=3, groups=4), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('tensor_cores', [False, True], ids=['default', 'tensor-cores'])
def test_emulated_autocast_computes_in_the_autocast_dtype(emulated_ext, monkeypatch,
                                                          tensor_cores):
    """Under autocast the op computes in the autocast dtype, as F.conv2d does, from fp32 inputs
    and parameters; the gradients reach the fp32 parameters. With both tensor-core switches, its
    forward, input and weight gradients run on the tensor-core kernels (their launches' shared
    memory sizes: TC_FWD_SMEM, TC_LAUNCH)."""
    if tensor_cores:
        monkeypatch.setenv('MMUNIREP_DWCONV_FWD_TC', '1')
        monkeypatch.setenv('MMUNIREP_DWCONV_WGRAD_TC', '1')
    emulated_ext.launches()
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
    torch.testing.assert_close(wt.grad.double(), w64.grad, rtol=3e-2,
                               atol=3e-2 * w64.grad.abs().max().item())
    smem = [size for _, size in emulated_ext.launches()]
    # forward, input gradient, weight gradient (+ the reduction over parts, no shared memory)
    tc_sizes = [TC_FWD_SMEM[13], TC_FWD_SMEM[13], TC_LAUNCH[13][1], 0]
    assert (smem == tc_sizes) == tensor_cores, smem


def test_emulated_module_trains_like_conv2d(emulated_ext):
    """DepthWiseConv2dImplicitGEMM's forward and backward through the kernels equal nn.Conv2d's
    (the module's fast path is taken for CUDA inputs only, so this calls the function directly
    with the module's parameters)."""
    torch.manual_seed(8)
    op = DepthWiseConv2dImplicitGEMM(6, 13, bias=True)
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

    monkeypatch.setattr(DepthWiseConv2dImplicitGEMM, '_fast_path_refusal', fast_path_for_cpu)
    arch = dict(depths=(1, 1, 2, 1), dims=(16, 24, 32, 40),
                kernel_sizes=((3, ), (13, ), (13, 13), (13, )))
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
        runs.append(([o.detach().double() for o in outs],
                     {n: p.grad.double() for n, p in model.named_parameters()}))
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
    assert len(calls) == 4 and isinstance(with_op.stages[1][0].dwconv.lk_origin,
                                          DepthWiseConv2dImplicitGEMM)


def test_emulated_launch_limits_are_enforced(emu):
    """A map needing more than 65535 tiles (grid.y) is refused with a clear error, not launched."""
    x = torch.empty(1, 1, 16 * 2048, 32 * 33)  # 2048 x 33 = 67584 tiles, 138 MB, never written
    with pytest.raises(RuntimeError, match='more than 65535 tiles'):
        emu.depthwise_conv2d_forward(x, torch.randn(1, 1, 3, 3), None)


# ----------------------------------------------------------------------------------------------
# The autotuner (mmunirep/ops/autotune.py) on the emulated kernels
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def autotuning(monkeypatch):
    """MMUNIREP_DWCONV_AUTOTUNE=1 with no choice made yet; times substituted by name."""
    monkeypatch.setenv('MMUNIREP_DWCONV_AUTOTUNE', '1')
    monkeypatch.setattr(autotune, '_choices', {})
    monkeypatch.setattr(autotune, '_warned', set())
    times = {}

    def measure(name, fn, device):
        fn()  # the candidate runs, as it would to be timed
        return times[name]

    monkeypatch.setattr(autotune, '_measure', measure)
    return times


def forward_backward(x, w, b, seed=5):
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    b = b.detach().requires_grad_()
    y = depthwise_conv2d(x, w, b)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype))
    return y.detach(), x.grad, w.grad, b.grad


# the parts variants of the weight gradient's kernels, slower than any other in the tests that
# are about the kernels
PARTS_SLOWER = {kernel + parts: 9.0 for kernel in ('default', 'pipelined', 'tensor cores')
                for parts in (', half the parts', ', twice the parts')}
# and the pipelined forward tiles (fp32)
FWD_PIPELINED_SLOWER = {tile + ' tile, pipelined': 9.0
                        for tile in ('default', '16x32x2', '32x32x2')}


def launches_of(emu, fn, env=None):
    """(kernel, shared memory bytes) of each launch ``fn`` makes (with ``env`` set)."""
    emu.launches()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in (env or {}).items():
            mp.setenv(name, value)
        fn()
    return emu.launches()


def test_emulated_autotune_keeps_the_fastest_variant_of_each_pass(emulated_ext, autotuning,
                                                                  monkeypatch):
    """The first call of a shape runs every variant of each pass, the fastest is kept (times
    substituted here; the emulator's would mean nothing), and later calls launch exactly the
    kernels that the variant's environment switch launches. fp32: every variant adds the same
    products in the same order, so the results are bitwise those without autotuning."""
    emu = emulated_ext
    autotuning.update({'default tile': 3.0, '16x32x2 tile': 2.0, '32x32x2 tile': 1.5,
                       'default tile, pipelined': 2.5, '16x32x2 tile, pipelined': 1.2,
                       '32x32x2 tile, pipelined': 1.0, 'default': 2.0, 'pipelined': 1.0,
                       **PARTS_SLOWER})
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 20, 40, generator=g)
    w = torch.randn(3, 1, 13, 13, generator=g) / 13
    b = torch.randn(3, generator=g)
    logged = []
    monkeypatch.setattr(autotune, 'print_log', lambda msg, logger: logged.append((msg, logger)))
    tuned = forward_backward(x, w, b)
    key = ('cpu', 'float32', 2, 3, 20, 40, 13)
    assert autotune.choices() == {('forward', *key): '32x32x2 tile, pipelined',
                                  ('weight_grad', *key): 'pipelined'}
    # each choice is logged once, with every candidate's time
    assert [m for m, _ in logged] == [
        f"mmunirep depthwise op autotuned {('forward', *key)}: 32x32x2 tile, pipelined (default "
        'tile 3.000 ms, 16x32x2 tile 2.000 ms, 32x32x2 tile 1.500 ms, default tile, pipelined '
        '2.500 ms, 16x32x2 tile, pipelined 1.200 ms, 32x32x2 tile, pipelined 1.000 ms)',
        f"mmunirep depthwise op autotuned {('weight_grad', *key)}: pipelined (default 2.000 ms, "
        'default, half the parts 9.000 ms, default, twice the parts 9.000 ms, pipelined 1.000 ms, '
        'pipelined, half the parts 9.000 ms, pipelined, twice the parts 9.000 ms)']
    assert {lg for _, lg in logged} == {'current'}
    monkeypatch.setenv('MMUNIREP_DWCONV_AUTOTUNE', '0')
    plain = forward_backward(x, w, b)
    for a, p in zip(tuned, plain):
        assert torch.equal(a, p)
    # the choices, applied: the same launches as the environment switches of those variants
    monkeypatch.setenv('MMUNIREP_DWCONV_AUTOTUNE', '1')
    run = lambda: forward_backward(x, w, b)  # noqa: E731
    chosen = launches_of(emu, run)
    monkeypatch.setenv('MMUNIREP_DWCONV_AUTOTUNE', '0')
    forced = launches_of(emu, run, {'MMUNIREP_DWCONV_FWD_TILE': '32x32x2',
                                    'MMUNIREP_DWCONV_FWD_PIPELINE': '1',
                                    'MMUNIREP_DWCONV_PIPELINE': '1'})
    default = launches_of(emu, run)
    assert chosen == forced and chosen != default
    assert len(chosen) == 4  # forward, input gradient, weight gradient, reduction: no tuning


@pytest.mark.parametrize('n, c, h, w, k', [(5, 3, 40, 37, 13), (32, 8, 7, 7, 13)])
def test_emulated_autotune_parts_are_half_and_twice_the_rule(emu, autotuning, monkeypatch, n, c,
                                                             h, w, k):
    """The weight gradient's parts variants (set_variants' weight_grad_parts) launch the rule's
    count (0), half of it rounded up (1) and twice it (2), within 1..min(items, 64), whatever
    MMUNIREP_DWCONV_WGRAD_PARTS says; the results agree with the rule's to the rounding of another
    summation order. Tuned, a parts variant that wins is what later calls launch. Both a tiled
    map and a whole-map one (7x7 K = 13 maps of classification run the latter)."""
    emu.grid_y()  # forget earlier launches
    default, _, (x, gy, wt) = weight_grads(emu, n, c, h, w, k, torch.float32)
    [rule, _] = emu.grid_y()
    monkeypatch.setenv('MMUNIREP_DWCONV_WGRAD_PARTS', '64')
    weight_grads(emu, n, c, h, w, k, torch.float32)
    [cap, _] = emu.grid_y()  # min(items, 64)
    assert 2 <= rule and 2 * rule <= cap, (rule, cap)  # so that half and twice differ from it
    monkeypatch.setenv('MMUNIREP_DWCONV_WGRAD_PARTS', '1')  # the variant comes first
    for variant, expected in ((0, rule), (1, (rule + 1) // 2), (2, 2 * rule)):
        emu.set_variants(-1, -1, -1, -1, variant)
        try:
            got, _, _ = weight_grads(emu, n, c, h, w, k, torch.float32)
        finally:
            emu.set_variants(-1, -1, -1, -1)
        assert emu.grid_y()[0] == expected, variant
        scale = assert_weight_grad_near_fp64(got, x, wt, gy)
        torch.testing.assert_close(got / scale, default / scale, rtol=1e-5, atol=1e-6)
    monkeypatch.delenv('MMUNIREP_DWCONV_WGRAD_PARTS')
    monkeypatch.setattr(dw_module, '_ext', emu)
    autotuning.update({'default tile': 1.0, '16x32x2 tile': 2.0, '32x32x2 tile': 2.0,
                       **FWD_PIPELINED_SLOWER, 'default': 2.0, 'default, half the parts': 3.0,
                       'default, twice the parts': 1.0, 'pipelined': 4.0,
                       'pipelined, half the parts': 4.0, 'pipelined, twice the parts': 4.0})
    wt = wt.detach().requires_grad_()
    depthwise_conv2d(x, wt, None).backward(gy)
    assert [v for (pass_, *_), v in autotune.choices().items()
            if pass_ == 'weight_grad'] == ['default, twice the parts']
    emu.grid_y()
    wt.grad = None
    depthwise_conv2d(x, wt, None).backward(gy)  # the choice, applied
    assert emu.grid_y()[-2:] == [2 * rule, 1]  # the weight gradient's launch, the reduction's
    scale = assert_weight_grad_near_fp64(wt.grad, x, wt, gy)
    torch.testing.assert_close(wt.grad / scale, default / scale, rtol=1e-5, atol=1e-6)


def test_emulated_autotune_leaves_out_a_variant_that_disagrees_or_fails(emu, autotuning,
                                                                         monkeypatch):
    """A variant whose result differs from the default kernel's (a broken kernel) or that
    raises is never chosen, however fast, and a warning says so once."""

    class Broken:
        """The emulated extension, with the 16x32x2 tile off by 1% and the 32x32x2 tile failing."""
        tile = -1

        def set_variants(self, forward_tile, *rest):
            self.tile = forward_tile
            emu.set_variants(forward_tile, *rest)

        def depthwise_conv2d_forward(self, x, w, b):
            if self.tile == 2:
                raise RuntimeError('launch failed')
            y = emu.depthwise_conv2d_forward(x, w, b)
            return y * 1.01 if self.tile == 1 else y

        def __getattr__(self, name):
            return getattr(emu, name)

    monkeypatch.setattr(dw_module, '_ext', Broken())
    # (the pipelined forward of those tiles is broken the same way; the default tile's is slower)
    autotuning.update({'default tile': 3.0, '16x32x2 tile': 1.0, '32x32x2 tile': 0.5,
                       'default tile, pipelined': 4.0})
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 2, 24, 24, generator=g)
    w = torch.randn(2, 1, 7, 7, generator=g)
    with pytest.warns(UserWarning) as caught:
        y = depthwise_conv2d(x, w, None)
        depthwise_conv2d(x, w, None)
    messages = [str(c.message) for c in caught]
    assert len(messages) == 4, messages
    for tile, (differs, failed) in zip(('16x32x2 tile', '16x32x2 tile, pipelined'),
                                       (messages[:2], messages[2:])):
        assert f'variant "{tile}" differs from the default kernel' in differs
        assert f'variant "{tile.replace("16", "32", 1)}" failed' in failed
        assert 'launch failed' in failed
    assert list(autotune.choices().values()) == ['default tile']
    torch.testing.assert_close(y, F.conv2d(x, w, padding=3, groups=2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_emulated_autotune_in_half_precision_with_real_timing(emulated_ext, monkeypatch, dtype):
    """Half precision adds the tensor-core variants (emulated wmma): whatever wins on the
    emulator's own clock, the results stay within the dtype's tolerance of fp64."""
    monkeypatch.setenv('MMUNIREP_DWCONV_AUTOTUNE', '1')
    monkeypatch.setattr(autotune, '_choices', {})
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 2, 18, 20, generator=g).to(dtype)
    w = (torch.randn(2, 1, 13, 13, generator=g) / 13).to(dtype)
    b = torch.randn(2, generator=g).to(dtype)
    y, gx, gw, gb = forward_backward(x, w, b)
    x64, w64, b64, y64 = reference(x, w, b)
    y64.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(5),
                             dtype=dtype).double())
    for got, exact in ((y, y64), (gx, x64.grad), (gw, w64.grad), (gb, b64.grad)):
        scale = exact.abs().max().clamp_min(1)
        torch.testing.assert_close(got.double() / scale, exact.detach() / scale, **TOL[dtype])
    assert {k[0] for k in autotune.choices()} == {'forward', 'weight_grad'}
    assert len(autotune.forward_candidates(x, 13)) == 4  # 3 tiles and the tensor cores (no
    # pipelined tiles: fp32 only)


def test_autotune_candidates_are_those_the_extension_has():
    x = torch.randn(2, 3, 20, 20)
    names = lambda c: [n for n, _ in c]  # noqa: E731
    tiles = ['default tile', '16x32x2 tile', '32x32x2 tile']
    assert names(autotune.forward_candidates(x, 13)) == tiles + [t + ', pipelined' for t in tiles]
    # small maps: their whole-map tile, pipelined in fp32; nothing to choose in half precision
    assert autotune.forward_candidates(x[:, :, :7, :7], 7) == [
        ('default tile', (0, 0, 0)), ('default tile, pipelined', (0, 0, 1))]
    assert autotune.forward_candidates(x[:, :, :14, :14].half(), 13) == []
    assert [c for _, c in autotune.forward_candidates(x, 7)] == [
        (0, 0, 0), (1, 0, 0), (2, 0, 0), (0, 0, 1), (1, 0, 1), (2, 0, 1)]
    assert names(autotune.forward_candidates(x.half(), 7)) == tiles + ['tensor cores']
    assert autotune.forward_candidates(x.bfloat16(), 13)[-1] == ('tensor cores', (0, 1, 0))
    assert autotune.forward_candidates(x, 31) == []  # tiles and tensor cores up to K = 13
    small = x[:, :, :16, :16]  # whole-map kernels up to K = 13; 16x32 tiles of 2 planes at 31
    parts = ['', ', half the parts', ', twice the parts']
    assert names(autotune.weight_grad_candidates(small.bfloat16(), 31)) == [
        kernel + p for kernel in ('default', 'pipelined', 'tensor cores') for p in parts]
    assert [c for _, c in autotune.weight_grad_candidates(x, 7)] == [
        (0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0), (0, 1, 1), (0, 1, 2)]
    # whole-map kernels: one kernel, with its parts varied
    assert names(autotune.weight_grad_candidates(small, 13)) == ['default' + p for p in parts]
    assert names(autotune.forward_candidates(small, 13)) == ['default tile',
                                                             'default tile, pipelined']
    assert autotune.forward_candidates(small.bfloat16(), 13) == []
    assert autotune.forward_candidates(x.double(), 13) == []  # run-time-K kernels
    assert autotune.weight_grad_candidates(x.double(), 13) == []
    assert autotune.forward_candidates(x, 5) == autotune.weight_grad_candidates(x, 9) == []


def test_autotune_follows_cudnn_benchmark_and_the_environment(monkeypatch):
    """Unset, MMUNIREP_DWCONV_AUTOTUNE means off until the variants have run on a GPU
    (FOLLOW_CUDNN_BENCHMARK False), and then follows cudnn.benchmark."""
    x = torch.randn(1, 1, 4, 4)
    ext = types.SimpleNamespace(set_variants=lambda *a: None, variant_fields=6)
    monkeypatch.delenv('MMUNIREP_DWCONV_AUTOTUNE', raising=False)
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', True)
    assert not autotune.FOLLOW_CUDNN_BENCHMARK and autotune.mode(x, ext) == 'off'
    monkeypatch.setattr(autotune, 'FOLLOW_CUDNN_BENCHMARK', True)
    for benchmark, expected in ((True, 'tune'), (False, 'off')):
        monkeypatch.setattr(torch.backends.cudnn, 'benchmark', benchmark)
        assert autotune.mode(x, ext) == expected
    monkeypatch.setenv('MMUNIREP_DWCONV_AUTOTUNE', '0')
    assert autotune.mode(x, ext) == 'off'  # even with cudnn.benchmark
    monkeypatch.setenv('MMUNIREP_DWCONV_AUTOTUNE', '1')
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', False)
    assert autotune.mode(x, ext) == 'tune'
    monkeypatch.setattr(autotune, '_warned', set())
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # a build without CUDA has no variants: off, silently
        assert autotune.mode(x, types.SimpleNamespace(with_cuda=False)) == 'off'
    for stale in (types.SimpleNamespace(set_variants=lambda *a: None),  # built before the
                  types.SimpleNamespace(set_variants=lambda *a: None, variant_fields=4),  # parts
                  types.SimpleNamespace(set_variants=lambda *a: None,  # or the pipelined
                                        variant_fields=5)):  # forward
        with pytest.warns(UserWarning, match='predates its variants .* Rebuild'):
            assert autotune.mode(x, stale) == 'off'
        autotune._warned.clear()
    monkeypatch.setattr(torch, 'are_deterministic_algorithms_enabled', lambda: True)
    assert autotune.mode(x, ext) == 'off'
    monkeypatch.setenv('MMUNIREP_DWCONV_AUTOTUNE', 'yes')
    with pytest.raises(ValueError, match="expected 1 or 0 .* got 'yes'"):
        autotune.mode(x, ext)


def test_emulated_set_variants_checks_its_arguments(emu):
    emu.set_variants(2, 1, 1, 1, 2, 1)
    emu.set_variants(-1, -1, -1, -1)  # weight_grad_parts and forward_pipelined default to -1
    assert emu.variant_fields == len(autotune.UNSET) == 6
    with pytest.raises(RuntimeError, match=r'set_variants: expected forward_tile and '
                       r'weight_grad_parts in -1..2 .* got \(3, 0, 0, 0, -1, -1\)'):
        emu.set_variants(3, 0, 0, 0)
    with pytest.raises(RuntimeError, match=r'got \(0, 0, 0, 0, 3, -1\)'):
        emu.set_variants(0, 0, 0, 0, 3)
    with pytest.raises(RuntimeError, match=r'got \(0, 0, 0, 0, 0, 2\)'):
        emu.set_variants(0, 0, 0, 0, 0, 2)


def test_emulated_autotune_under_torch_compile(emulated_ext, autotuning, monkeypatch):
    """Compiled with fullgraph=True, the op's custom operators run the autotuner at run time
    (not while tracing): the first call tunes, and later calls of the compiled module launch the
    chosen variants' kernels."""
    emu = emulated_ext
    monkeypatch.setattr(DepthWiseConv2dImplicitGEMM, '_fast_path_refusal', lambda self, x: None)
    autotuning.update({'default tile': 3.0, '16x32x2 tile': 1.0, '32x32x2 tile': 2.0,
                       **FWD_PIPELINED_SLOWER, 'default': 1.0, 'pipelined': 2.0,
                       **PARTS_SLOWER})
    torch.manual_seed(7)
    conv = DepthWiseConv2dImplicitGEMM(4, 13, bias=True)
    compiled = torch.compile(copy.deepcopy(conv), fullgraph=True, backend='aot_eager')
    x = torch.randn(2, 4, 24, 24)

    def step(net):
        out = net(x.detach().requires_grad_())
        out.square().sum().backward()
        return out.detach()

    tuned = step(compiled)
    key = ('cpu', 'float32', 2, 4, 24, 24, 13)
    assert autotune.choices() == {('forward', *key): '16x32x2 tile',
                                  ('weight_grad', *key): 'default'}
    chosen = launches_of(emu, lambda: step(compiled))
    monkeypatch.setenv('MMUNIREP_DWCONV_AUTOTUNE', '0')
    forced = launches_of(emu, lambda: step(conv), {'MMUNIREP_DWCONV_FWD_TILE': '16x32x2'})
    assert chosen == forced and len(chosen) == 4
    assert torch.equal(tuned, step(conv))
