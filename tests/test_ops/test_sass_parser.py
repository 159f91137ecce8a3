"""sass_report's parsing of cuobjdump's output, which the ``sass`` tests (test_sass.py, opt-in and
needing a built extension) rely on: pure Python, so it runs in every test session."""

import pytest

import sass_report

# the shape of `cuobjdump -sass` output: one kernel with a predicated loop
SAMPLE = """
Fatbin elf code:
================
arch = sm_90
code version = [1,7]

        code for sm_90
                Function : _Z6kernelPf
        .headerflags    @"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;            /* 0x00000a00ff017b82 */
        /*0010*/                   LDS R2, [R0] ;                    /* 0x0000000000027984 */
        /*0020*/                   FFMA R3, R2, R2, R3 ;             /* 0x0000000202037223 */
        /*0030*/               @P0 FFMA.FTZ R4, R2, R2, R4 ;        /* 0x0000000202040223 */
        /*0040*/              @!P1 BRA 0x10 ;                       /* 0xfffffffc00008947 */
        /*0050*/                   STG.E.128 desc[UR4][R6.64], R8 ; /* 0x0000000806007986 */
        /*0060*/                   EXIT ;                            /* 0x000000000000794d */
"""


def test_parse_reads_kernels_instructions_and_loops():
    (k,) = sass_report.parse(SAMPLE)
    assert (k.arch, k.mangled) == ('sm_90', '_Z6kernelPf')
    assert k.name in ('_Z6kernelPf', 'kernel(float*)')  # demangled where c++filt exists
    assert [a for a, _, _ in k.instrs] == list(range(0, 0x70, 0x10))
    # predicates dropped: the opcodes with their modifiers
    assert [op for _, op, _ in k.instrs] == [
        'LDC', 'LDS', 'FFMA', 'FFMA.FTZ', 'BRA', 'STG.E.128', 'EXIT'
    ]  # fmt: skip
    assert k.loops() == [(0x10, 0x40)]
    assert k.hot_loop() == (0x10, 0x40, [])
    row = sass_report.summarize(k)
    assert (row['ffma'], row['lds'], row['total'], row['stg128'], row['local']) == (2, 1, 4, 1, 0)


def test_parse_rejects_output_without_kernels():
    with pytest.raises(ValueError, match='no kernels in the cuobjdump output'):
        sass_report.parse('Fatbin ptx code:\n================\n')
