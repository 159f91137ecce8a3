"""The compiled kernels' machine code (SASS) has the properties they are written for.

The emulated tests (test_ops_emulated.py) check what the kernels compute; they cannot see what nvcc
made of them. This reads the sm_90 build (CI builds it before the tests; README "The op") with
benchmarks/sass_report.py: the compile-time-K forward kernels keep the input window and the
accumulators in registers (per filter row exactly the P * K FFMAs of P outputs per thread, or for
whole-map tiles exactly those whose input column can be inside the map, each input loaded from
shared memory once, no local memory), write 16-byte stores, and keep a tight loop; the
weight-gradient kernels keep their filter row in registers (8 * K FFMAs per 8 outputs of a tile
row, again less those on padding columns for whole-map tiles, each staged value loaded once, 32
outputs per item) with no local memory among those FFMAs. A regression there (an array moved to
local memory, a loop left rolled so that loads are no longer shared between taps, a padding
column's FMAs no longer left out) would pass every emulated test and cost the GPU speed.
"""
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import sass_report  # noqa: E402

SO = sass_report.find_extension()
pytestmark = [
    pytest.mark.skipif(SO is None, reason='the CUDA extension is not built (tools/build_ops.sh)'),
    pytest.mark.skipif(sass_report.find_cuobjdump() is None,
                       reason='no cuobjdump (requirements/stack.txt installs it)')]


@pytest.fixture(scope='module')
def kernels():
    found = sass_report.disassemble(SO, 'sm_90')
    assert found, 'the extension has no sm_90 code: CI builds TORCH_CUDA_ARCH_LIST=9.0'
    return found


def compiled_k(kernels, kind):
    """{(dtype, K, (TH, TW, planes, P, whole map), pipelined): kernel} of the compile-time-K
    kernels of one kind (pipelined: the weight gradient's variant, False for the forward)."""
    out = {}
    for k in kernels:
        m = re.search(kind + r'_k_kernel<(\w+), float, (\d+), '
                      r'TileShape<(\d+), (\d+), (\d+), (\d+), (true|false)>(, (true|false))?',
                      k.name)
        if m:
            tile = tuple(map(int, m.group(3, 4, 5, 6))) + (m.group(7) == 'true',)
            key = (m.group(1), int(m.group(2)), tile, m.group(9) == 'true')
            assert key not in out, (k.name, 'two kernels with one key')
            out[key] = k
    return out


def in_map(ksize, tw, whole, col):
    """Whether column `col` of a window (the tile's column col - K // 2) can be inside the map:
    a whole-map tile's map is its TW columns, anything left or right of them padding."""
    return not whole or ksize // 2 <= col < ksize // 2 + tw


def local_memory(k, lo=0, hi=1 << 62):
    return k.count(lambda op: op.split('.')[0] in ('LDL', 'STL'), lo, hi)


def test_forward_kernels_keep_window_and_outputs_in_registers(kernels):
    found = compiled_k(kernels, 'forward')
    # 3 dtypes x (K 7 and 13 in three tile shapes and the two MMUNIREP_DWCONV_FWD_TILE ones,
    # K 31 in one)
    assert len(found) == 3 * (7 + 4), sorted(found)
    for (dtype, ksize, (th, tw, planes, per_thread, whole), _), k in found.items():
        lo, hi, nested = k.hot_loop()
        row = sass_report.summarize(k)
        assert not nested, (k.name, 'the filter-row loop should have no inner loop')
        # per filter row: the FMAs of P outputs x K taps that can read the map, and its window's
        # inputs that can be in the map and the K taps, each loaded once
        fmas = sum(in_map(ksize, tw, whole, p + kw)
                   for p in range(per_thread) for kw in range(ksize))
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
    # 3 dtypes x (K 7 and 13 in three tile shapes, K 31 in one, and the pipelined variant of the
    # three large-map tiles: MMUNIREP_DWCONV_PIPELINE=1)
    assert len(found) == 3 * (7 + 3), sorted(found)
    assert sorted(key[:3] for key in found if key[3]) == sorted(
        key[:3] for key in found if not key[3] and not key[2][4])
    for (dtype, ksize, (th, tw, _, _, whole), pipelined), k in found.items():
        lo, hi, nested = k.hot_loop()
        row = sass_report.summarize(k)
        samples, steps = 32 // tw, tw // 8  # an item: samples x (8-output steps of a tile row)
        fmas = sum(in_map(ksize, tw, whole, q0 + j + kw)
                   for q0 in range(0, tw, 8) for j in range(8) for kw in range(ksize))
        assert whole or fmas == steps * 8 * ksize
        assert row['ffma'] == samples * fmas, (k.name, row, fmas)
        if whole:  # each staged value of the item (gradient and map, TW a row) loaded once
            assert row['lds'] <= samples * 2 * tw, (k.name, row)
        else:  # per step 8 gradients and the inputs not already held from the previous step
            assert row['lds'] <= samples * (steps * 8 + (8 + ksize - 1) + (steps - 1) * 8), \
                (k.name, row)
        ffma_at = [a for a, op, _ in k.instrs if lo <= a <= hi and sass_report.is_ffma(op)]
        assert local_memory(k, min(ffma_at), max(ffma_at)) == 0, (k.name, 'spills in the FMAs')
        # the item walk adds and carries (ItemWalk): no integer division, whose routine is a
        # float reciprocal (MUFU.RCP) of the divisor converted by I2F, in the item loop
        division = k.count(lambda op: op.split('.')[0] in ('MUFU', 'I2F'), lo, hi, nested)
        assert division == 0, (k.name, 'an integer division in the item loop')


def test_pipelined_weight_grad_loads_the_next_item_before_computing_this_one(kernels):
    """The pipelined weight gradient's item loop (MMUNIREP_DWCONV_PIPELINE=1), in fp16 / bf16,
    stores the prefetched item to shared memory, passes its one barrier, then issues the next
    item's global loads (one per BoxPrefetch slot) before the first FFMA: so they are in flight
    during the FMAs. A compiler that sank the loads to their stores would pass every other test.
    In fp32 it waits for its copies (DEPBAR), passes its one barrier, then issues the next item's
    cp.async copies (LDGSTS; no global load through registers) before the first FFMA, and at
    K = 7 and 13 takes the default kernel's register allocation (its occupancy)."""
    all_k = compiled_k(kernels, 'weight_grad')
    found = {key: k for key, k in all_k.items() if key[3]}
    assert len(found) == 3 * 3
    for (dtype, ksize, tile, _), k in found.items():
        th, tw = tile[:2]
        lo, hi, nested = k.hot_loop()
        if dtype == 'float':
            ops = [op.split('.')[0] for a, op, _ in k.instrs if lo <= a <= hi]  # nested too
            at = {name: [i for i, op in enumerate(ops) if op == name]
                  for name in ('LDGSTS', 'LDG', 'DEPBAR', 'BAR', 'FFMA')}
            assert at['LDGSTS'] and not at['LDG'], (k.name, 'staging through registers')
            assert len(at['DEPBAR']) == len(at['BAR']) == 1, (k.name, 'one wait, one barrier')
            assert at['DEPBAR'][0] < at['BAR'][0] < min(at['LDGSTS']), k.name
            assert max(at['LDGSTS']) < min(at['FFMA']), (k.name, 'copies issued after the FMAs')
            assert local_memory(k) == 0, k.name
            if ksize in (7, 13):
                plain = all_k[(dtype, ksize, tile, False)]
                assert -(-k.registers // 8) == -(-plain.registers // 8), (k.registers,
                                                                          plain.registers)
            continue
        assert not nested, k.name
        ops = [op.split('.')[0] for a, op, _ in k.instrs if lo <= a <= hi]
        at = {name: [i for i, op in enumerate(ops) if op == name]
              for name in ('LDG', 'STS', 'BAR', 'FFMA')}
        # BoxPrefetch's slots: rows of the box / (threads // columns), for the input's
        # (TH + K - 1) x (TW + K - 1) box and the gradient's TH x TW, K x TH threads
        threads = ksize * th
        slots = sum(-(-rows // (threads // cols))
                    for rows, cols in ((th + ksize - 1, tw + ksize - 1), (th, tw)))
        assert len(at['LDG']) == len(at['STS']) == slots, (k.name, slots, at)
        assert len(at['BAR']) == 1, (k.name, 'one barrier per item')
        assert max(at['STS']) < at['BAR'][0] < min(at['LDG']), k.name
        assert max(at['LDG']) < min(at['FFMA']), (k.name, 'loads issued after the FMAs began')


def test_pipelined_forward_copies_with_cp_async_and_keeps_the_default_loop(kernels):
    """The pipelined forward (MMUNIREP_DWCONV_FWD_PIPELINE=1; fp32, K = 7 and 13, each tile,
    whole-map ones included): its filter-row loop is the default kernel's (the same FFMAs and
    shared-memory loads, no local memory), its staging goes through cp.async (LDGSTS: the input and filter never pass
    through registers, so the only global load left is the bias), and an item costs one barrier
    and one wait for its copies (DEPBAR)."""
    default = compiled_k(kernels, 'forward')
    found = {}
    for k in kernels:
        m = re.search(r'forward_pipelined_kernel<(\w+), float, (\d+), '
                      r'TileShape<(\d+), (\d+), (\d+), (\d+), (true|false)>', k.name)
        if m:
            tile = tuple(map(int, m.group(3, 4, 5, 6))) + (m.group(7) == 'true',)
            found[(m.group(1), int(m.group(2)), tile, False)] = k
    assert sorted(found) == sorted(
        key for key in default if key[0] == 'float' and key[1] in (7, 13))
    assert len(found) == 2 * 5
    for key, k in found.items():
        lo, hi, nested = k.hot_loop()
        assert not nested, k.name
        row, plain = sass_report.summarize(k), sass_report.summarize(default[key])
        assert (row['ffma'], row['lds']) == (plain['ffma'], plain['lds']), (k.name, row, plain)
        assert local_memory(k) == 0, k.name
        ops = [op.split('.')[0] for _, op, _ in k.instrs]
        assert ops.count('LDGSTS') >= 2, (k.name, 'the staging copies are not cp.async')
        assert ops.count('LDG') <= 1, (k.name, 'global loads besides the bias')
        assert ops.count('BAR') == 1 and ops.count('DEPBAR') == 1, k.name
        assert row['stg128'] >= 1, (k.name, 'no 16-byte output stores')


def test_tensor_core_weight_grad_multiplies_on_the_tensor_cores(kernels):
    """The tensor-core weight gradient (MMUNIREP_DWCONV_WGRAD_TC=1, half and bfloat16): per item,
    2 fragments of the gradient tile and, for each of a warp's filter rows, NF + 1 of the input
    loaded from shared memory as matrices (LDSM, one per 16x16 fragment) and 2 NF products of
    16x16x16 (2 HMMA each), the loops unrolled; no generic loads and register transposes (nvcc
    made bfloat16's wmma::load_matrix_sync LD.E + MOVM, hence load_shared_fragment's PTX), no
    local memory, no division in the item loop."""
    found = {}
    for k in kernels:
        m = re.search(r'weight_grad_tc_kernel<(\w+), (\d+)>', k.name)
        if m:
            found[(m.group(1), int(m.group(2)))] = k
    assert sorted(found) == [(d, ksize) for d in ('BFloat16', 'Half') for ksize in (7, 13, 31)]
    for (dtype, ksize), k in found.items():
        nf, rows = -(-(16 + ksize - 1) // 16), -(-ksize // 8)  # TensorCoreWgrad<K>
        lo, hi, nested = k.hot_loop()

        def count(name):
            return k.count(lambda op: op.split('.')[0] == name, lo, hi, nested)
        assert count('HMMA') == rows * 2 * nf * 2, (k.name, count('HMMA'))
        assert count('LDSM') == 2 + rows * (nf + 1), (k.name, count('LDSM'))
        assert count('LD') == count('MOVM') == 0, (k.name, 'generic loads, register transposes')
        assert count('MUFU') == count('I2F') == 0, (k.name, 'a division in the item loop')
        assert local_memory(k) == 0 and k.stack == 0, k.name


def test_tensor_core_forward_multiplies_on_the_tensor_cores(kernels):
    """The tensor-core forward and input gradient (MMUNIREP_DWCONV_FWD_TC=1, half and bfloat16,
    K = 7 and 13): its filter-row loop loads, per 16x16x16 product (2 HMMA), one fragment of the
    staged input and one of the filter row's Toeplitz matrix from shared memory as matrices
    (LDSM), NF products per filter row; no generic loads, register transposes or local memory."""
    found = {}
    for k in kernels:
        m = re.search(r'forward_tc_kernel<(\w+), (\d+)>', k.name)
        if m:
            found[(m.group(1), int(m.group(2)))] = k
    assert sorted(found) == [(d, ksize) for d in ('BFloat16', 'Half') for ksize in (7, 13)]
    for (dtype, ksize), k in found.items():
        nf = -(-(16 + ksize - 1) // 16)
        lo, hi, nested = k.hot_loop()
        assert not nested, k.name

        def count(name):
            return k.count(lambda op: op.split('.')[0] == name, lo, hi)
        hmma = count('HMMA')
        assert hmma > 0 and hmma % (2 * nf) == 0, (k.name, hmma)  # whole filter rows
        assert count('LDSM') == hmma, (k.name, count('LDSM'), hmma)
        assert count('LD') == count('MOVM') == 0, (k.name, 'generic loads, register transposes')
        assert local_memory(k) == 0 and k.stack == 0, k.name


def test_no_kernel_spills_and_the_pipelined_weight_grad_keeps_its_occupancy(kernels):
    """cuobjdump -res-usage: no compile-time-K kernel uses stack (spilled registers; the run-time-K
    weight gradient keeps its per-thread taps in a local array by design). The pipelined weight
    gradient asks ptxas for resident blocks (its __launch_bounds__,
    pipelined_weight_grad_min_blocks): at K = 13 as many as the default kernel gets, so that a
    measured difference is the pipelining's; at K = 7 9, where the default gets 12 with 40
    registers (the pipelined kernel spills at 48) and ptxas left to itself gave 8."""
    found = compiled_k(kernels, 'weight_grad')
    for k in list(found.values()) + list(compiled_k(kernels, 'forward').values()):
        assert k.registers is not None and k.stack == 0, (k.name, k.registers, k.stack)
    for (dtype, ksize, tile, pipelined), k in found.items():
        if not pipelined or ksize == 31:  # K = 31: one block of 496 threads either way
            continue
        default = found[(dtype, ksize, tile, False)]
        threads = ksize * tile[0]
        ours, theirs = (sass_report.blocks_per_sm(x.registers, threads) for x in (k, default))
        if ksize == 13:
            assert ours >= theirs, (k.name, k.registers, default.registers)
        else:
            assert ours >= 9 and theirs >= 12, (k.name, k.registers, default.registers)


def test_blocks_per_sm_matches_ncu():
    """The occupancy that ncu reported on the H100 (benchmarks/results/gpu_session_2026-11-22.md):
    the K = 13 weight gradient, 56 registers and 208 threads, 55% theoretical (5 blocks of 7
    warps); K = 7 in bf16, 48 registers and 112 threads, 63% (10 blocks of 4 warps)."""
    assert sass_report.blocks_per_sm(56, 208) == 5
    assert sass_report.blocks_per_sm(48, 112) == 10
    assert sass_report.blocks_per_sm(32, 1024) == 2  # 2048 threads per SM
    assert sass_report.blocks_per_sm(16, 32) == 32   # 32 blocks per SM


def test_report_writes_a_row_per_kernel(kernels, tmp_path):
    out = tmp_path / 'sass.md'
    sass_report.main(['--so', SO, '--arch', 'sm_90', '--out', str(out)])
    rows = [line for line in out.read_text().splitlines() if line.startswith('| sm_90')]
    assert len(rows) == len(kernels)
    assert any(re.search(r'forward_k_kernel<float, float, 13, TileShape<16, 32, 4, 16, false> >` '
                         r'\| \d+ \| 0 \| 0 \| 4 \| 208 \| 0 \| 41 \|', r) for r in rows), rows


def test_parse_rejects_output_without_kernels():
    with pytest.raises(ValueError, match='no kernels'):
        sass_report.parse('Fatbin ptx code:\n================\n')
