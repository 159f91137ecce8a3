"""The compiled kernels' machine code (SASS) has the properties they are written for.

The emulated tests (test_depthwise_conv_emulated.py) check what the kernels compute; they cannot
see what nvcc made of them. This reads an sm_90 build (`TORCH_CUDA_ARCH_LIST=9.0 bash
scripts/build_ops.sh`; run with `pytest tests -m sass`) with sass_report.py: the compile-time-K
forward kernels keep the input window and the accumulators in registers (per filter row exactly
the P * K FFMAs of P outputs per thread, or for whole-map tiles exactly those whose input column
can be inside the map, each input loaded from shared memory once, no local memory), write 16-byte
stores, and keep a tight loop; the weight-gradient kernels keep their filter row in registers
(8 * K FFMAs per 8 outputs of a tile row, again less those on padding columns for whole-map
tiles, each staged value loaded once, 32 outputs per item) with no local memory among those
FFMAs. A regression there (an array moved to local memory, a loop left rolled so that loads are
no longer shared between taps, a padding column's FMAs no longer left out) would pass every
emulated test and cost the GPU speed.
"""

import re

import pytest

import sass_report

SO = sass_report.find_extension()
pytestmark = [
    pytest.mark.sass,
    pytest.mark.skipif(SO is None, reason='the CUDA extension is not built (scripts/build_ops.sh)'),
    pytest.mark.skipif(
        sass_report.find_cuobjdump() is None,
        reason='no cuobjdump (pip install -r requirements/dev.txt)',
    ),
]


@pytest.fixture(scope='module')
def kernels():
    found = sass_report.disassemble(SO, 'sm_90')
    assert found, 'the extension has no sm_90 code: CI builds TORCH_CUDA_ARCH_LIST=9.0'
    return found


def compiled_k(kernels, kind):
    """{(dtype, K, (TH, TW, planes, P, whole map)): kernel} of the compile-time-K kernels of one
    kind."""
    out = {}
    for k in kernels:
        m = re.search(
            kind + r'_k_kernel<(\w+), float, (\d+), '
            r'TileShape<(\d+), (\d+), (\d+), (\d+), (true|false)>',
            k.name,
        )
        if m:
            tile = tuple(map(int, m.group(3, 4, 5, 6))) + (m.group(7) == 'true',)
            out[(m.group(1), int(m.group(2)), tile)] = k
    return out


def in_map(ksize, tw, whole, col):
    """Whether column `col` of a window (the tile's column col - K // 2) can be inside the map:
    a whole-map tile's map is its TW columns, anything left or right of them padding."""
    return not whole or ksize // 2 <= col < ksize // 2 + tw


def local_memory(k, lo=0, hi=1 << 62):
    return k.count(lambda op: op.split('.')[0] in ('LDL', 'STL'), lo, hi)


def test_forward_kernels_keep_window_and_outputs_in_registers(kernels):
    found = compiled_k(kernels, 'forward')
    # 3 dtypes x (K 7 and 13 in three tile shapes, K 31 in one)
    assert len(found) == 3 * 7, sorted(found)
    for (_, ksize, (_, tw, _, per_thread, whole)), k in found.items():
        lo, hi, nested = k.hot_loop()
        row = sass_report.summarize(k)
        assert not nested, (k.name, 'the filter-row loop should have no inner loop')
        # per filter row: the FMAs of P outputs x K taps that can read the map, and its window's
        # inputs that can be in the map and the K taps, each loaded once
        fmas = sum(
            in_map(ksize, tw, whole, p + kw) for p in range(per_thread) for kw in range(ksize)
        )
        loads = sum(in_map(ksize, tw, whole, j) for j in range(per_thread + ksize - 1)) + ksize
        assert whole or fmas == per_thread * ksize
        rows = row['ffma'] // fmas  # nvcc may unroll the filter-row loop
        assert rows >= 1 and row['ffma'] == rows * fmas, (k.name, row, fmas)
        assert row['lds'] == rows * loads, (k.name, row, loads)
        assert row['ffma_share'] >= 0.6, (k.name, row)
        assert local_memory(k) == 0, k.name
        assert row['stg128'] >= 1, (k.name, 'no 16-byte output stores')


def test_weight_grad_kernels_keep_filter_rows_in_registers(kernels):
    found = compiled_k(kernels, 'weight_grad')
    assert len(found) == 3 * 7, sorted(found)
    for (_, ksize, (_, tw, _, _, whole)), k in found.items():
        lo, hi, nested = k.hot_loop()
        row = sass_report.summarize(k)
        samples, steps = 32 // tw, tw // 8  # an item: samples x (8-output steps of a tile row)
        fmas = sum(
            in_map(ksize, tw, whole, q0 + j + kw)
            for q0 in range(0, tw, 8)
            for j in range(8)
            for kw in range(ksize)
        )
        assert whole or fmas == steps * 8 * ksize
        assert row['ffma'] == samples * fmas, (k.name, row, fmas)
        if whole:  # each staged value of the item (gradient and map, TW a row) loaded once
            assert row['lds'] <= samples * 2 * tw, (k.name, row)
        else:  # per step 8 gradients and the inputs not already held from the previous step
            assert row['lds'] <= samples * (steps * 8 + (8 + ksize - 1) + (steps - 1) * 8), (
                k.name,
                row,
            )
        ffma_at = [a for a, op, _ in k.instrs if lo <= a <= hi and sass_report.is_ffma(op)]
        assert local_memory(k, min(ffma_at), max(ffma_at)) == 0, (k.name, 'spills in the FMAs')
