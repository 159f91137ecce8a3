"""The compiled kernels' machine code (SASS) has the properties they are written for.

The emulated tests (test_ops_emulated.py) check what the kernels compute; they cannot see what nvcc
made of them. This reads the sm_90 build (CI builds it before the tests; README "The op") with
benchmarks/sass_report.py: the compile-time-K forward kernels keep the input window and the
accumulators in registers (exactly P * K FFMAs per filter row for P outputs per thread, each input
loaded from shared memory once, no local memory), write 16-byte stores, and keep a tight loop; the
weight-gradient kernels keep their filter row in registers (8 * K FFMAs per 8 outputs of a tile
row, each staged value loaded once, 32 outputs per item) with no local memory among those FFMAs. A
regression there (an array moved to local memory, a loop left rolled so that loads are no longer
shared between taps) would pass every emulated test and cost the GPU speed.
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
    """{(dtype, K, tile): kernel} of the compile-time-K kernels of one kind."""
    out = {}
    for k in kernels:
        m = re.search(kind + r'_k_kernel<(\w+), float, (\d+), TileShape<(\d+), (\d+), (\d+)',
                      k.name)
        if m:
            out[(m.group(1), int(m.group(2)), tuple(map(int, m.group(3, 4, 5))))] = k
    return out


def local_memory(k, lo=0, hi=1 << 62):
    return k.count(lambda op: op.split('.')[0] in ('LDL', 'STL'), lo, hi)


def test_forward_kernels_keep_window_and_outputs_in_registers(kernels):
    found = compiled_k(kernels, 'forward')
    # 3 dtypes x (K 7 and 13 in three tile shapes, K 31 in one)
    assert len(found) == 3 * 7, sorted(found)
    for (dtype, ksize, tile), k in found.items():
        lo, hi, nested = k.hot_loop()
        row = sass_report.summarize(k)
        per_thread = 16 if tile == (16, 32, 2) else 8  # outputs per thread (TileShape)
        assert not nested, (k.name, 'the filter-row loop should have no inner loop')
        assert row['ffma'] == per_thread * ksize, (k.name, row)
        # P + K - 1 inputs and K taps per filter row, each loaded once
        assert row['lds'] == per_thread + ksize - 1 + ksize, (k.name, row)
        assert row['ffma_share'] >= 0.6, (k.name, row)
        assert local_memory(k) == 0, k.name
        assert row['stg128'] >= 1, (k.name, 'no 16-byte output stores')


def test_weight_grad_kernels_keep_filter_rows_in_registers(kernels):
    found = compiled_k(kernels, 'weight_grad')
    assert len(found) == 3 * 7, sorted(found)
    for (dtype, ksize, (th, tw, _)), k in found.items():
        lo, hi, nested = k.hot_loop()
        row = sass_report.summarize(k)
        samples, steps = 32 // tw, tw // 8  # an item: samples x (8-output steps of a tile row)
        assert row['ffma'] == samples * steps * 8 * ksize, (k.name, row)
        # per step 8 gradients and the inputs not already held from the sample's previous step
        assert row['lds'] <= samples * (steps * 8 + (8 + ksize - 1) + (steps - 1) * 8), \
            (k.name, row)
        ffma_at = [a for a, op, _ in k.instrs if lo <= a <= hi and sass_report.is_ffma(op)]
        assert local_memory(k, min(ffma_at), max(ffma_at)) == 0, (k.name, 'spills in the FMAs')


def test_report_writes_a_row_per_kernel(kernels, tmp_path):
    out = tmp_path / 'sass.md'
    sass_report.main(['--so', SO, '--arch', 'sm_90', '--out', str(out)])
    rows = [line for line in out.read_text().splitlines() if line.startswith('| sm_90')]
    assert len(rows) == len(kernels)
    assert any('forward_k_kernel<float, float, 13, TileShape<16, 32, 2, 16> >` | 0 | 4 | 208 | 41 |'
               in r for r in rows), rows


def test_parse_rejects_output_without_kernels():
    with pytest.raises(ValueError, match='no kernels'):
        sass_report.parse('Fatbin ptx code:\n================\n')
