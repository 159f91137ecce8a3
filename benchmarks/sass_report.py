"""What the compiled depthwise-conv kernels' machine code (SASS) does, read without a GPU.

    python benchmarks/sass_report.py                      # mmunirep/_ext*.so, every architecture
    python benchmarks/sass_report.py --arch sm_90 --out benchmarks/results/sass_sm90.md

It disassembles the extension with cuobjdump (the CUDA toolkit's, or pip's nvidia-cuda-cuobjdump
with nvidia-cuda-nvdisasm, which requirements/stack.txt installs) and reports, for each kernel:
- local-memory instructions (LDL / STL: register spills, or arrays the compiler could not keep in
  registers);
- its hot loop, the loop with the most FFMAs or tensor-core HMMAs (outside the loops nested in
  it, which the weight-gradient kernels' tile staging is): its FFMA, HMMA, shared-memory load (LDS
  and LDSM, the tensor cores' fragment loads) and total instruction counts, nested loops left
  out. An SM sub-partition issues one instruction per cycle and its FP32
  units take one FFMA per cycle, so the FFMA share of the hot loop bounds the fraction of the fp32
  FMA peak that loop can reach; LDS per FFMA says how hard it leans on shared memory (a conflict-
  free LDS of a warp takes one of the SM's one-per-cycle shared-memory wavefronts, against four
  FFMAs);
- whether it writes global memory with 16-byte stores (STG.E.128).
These are static facts about the code, not measurements: benchmarks/dwconv_benchmark.py measures.
No tool of the field reads SASS loops this way (cuobjdump / nvdisasm only print them), hence this
script. tests/test_sass.py checks the properties the kernels are written for on CI's build.
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Kernel:
    arch: str
    mangled: str
    name: str = ''
    instrs: list = field(default_factory=list)  # (address, opcode with modifiers, text)
    registers: int = None  # per thread, and stack bytes (spills), from cuobjdump -res-usage
    stack: int = None

    def count(self, pred, lo=0, hi=1 << 62, skip=()):
        """Instructions in [lo, hi], outside the ranges `skip`, whose opcode satisfies pred."""
        return sum(1 for a, op, _ in self.instrs
                   if lo <= a <= hi and pred(op) and not any(s <= a <= e for s, e in skip))

    def loops(self):
        """(start, end) of each loop: a branch back to an earlier address."""
        out = []
        for a, op, text in self.instrs:
            m = re.search(r'\bBRA\b.*?0x([0-9a-f]+)', text)
            if op == 'BRA' and m and int(m.group(1), 16) <= a:
                out.append((int(m.group(1), 16), a))
        return out

    def hot_loop(self):
        """(start, end, nested loops) of the loop with the most FFMAs or HMMAs outside its nested
        loops (the staging loops inside a weight-gradient item loop are counted on their own),
        the innermost of equals; None without such loops."""
        loops, best = self.loops(), None
        for lo, hi in loops:
            nested = [(a, b) for a, b in loops if lo <= a and b <= hi and (a, b) != (lo, hi)]
            key = (self.count(lambda op: is_ffma(op) or is_hmma(op), lo, hi, nested), -(hi - lo))
            if key[0] and (best is None or key > best[0]):
                best = (key, (lo, hi, nested))
        return None if best is None else best[1]


def is_ffma(op):
    return op.split('.')[0] == 'FFMA'


def is_hmma(op):
    return op.split('.')[0] == 'HMMA'


def is_lds(op):
    return op.split('.')[0] in ('LDS', 'LDSM')


def find_cuobjdump():
    """cuobjdump on the PATH, under CUDA_HOME, or from pip's nvidia-cuda-cuobjdump."""
    candidates = [shutil.which('cuobjdump')]
    if os.environ.get('CUDA_HOME'):
        candidates.append(os.path.join(os.environ['CUDA_HOME'], 'bin', 'cuobjdump'))
    try:
        import nvidia
        for base in nvidia.__path__:
            candidates += glob.glob(os.path.join(base, 'cu*', 'bin', 'cuobjdump'))
    except ImportError:
        pass
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    return None


def find_extension():
    found = sorted(glob.glob(os.path.join(ROOT, 'mmunirep', '_ext*.so')))
    return found[0] if found else None


def demangle(names):
    if not names or not shutil.which('c++filt'):
        return list(names)
    out = subprocess.run(['c++filt'], input='\n'.join(names), capture_output=True, text=True,
                         check=True).stdout.splitlines()
    return [re.sub(r'mmunirep::|c10::', '', n) for n in out]


def disassemble(so, arch=None, cuobjdump=None):
    """The kernels of the extension `so` ([Kernel]), for one architecture or all."""
    tool = cuobjdump or find_cuobjdump()
    if tool is None:
        raise FileNotFoundError(
            'cuobjdump not found: install the CUDA toolkit or `pip install nvidia-cuda-cuobjdump '
            'nvidia-cuda-nvdisasm` (requirements/stack.txt), or set CUDA_HOME')
    cmd = [tool, '-sass'] + (['-arch', arch] if arch else []) + [so]
    text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    kernels = parse(text)
    cmd = [tool, '-res-usage'] + (['-arch', arch] if arch else []) + [so]
    usage = parse_resource_usage(subprocess.run(cmd, capture_output=True, text=True,
                                                check=True).stdout)
    for k in kernels:
        k.registers, k.stack = usage.get((k.arch, k.mangled), (None, None))
    return kernels


def parse_resource_usage(text):
    """{(arch, mangled name): (registers per thread, stack bytes)} from cuobjdump -res-usage."""
    out = {}
    for arch, name, line in by_function(text, r'\s*Function (\S+):'):
        m = re.search(r'REG:(\d+) STACK:(\d+)', line or '')
        if m:
            out.setdefault((arch, name), (int(m.group(1)), int(m.group(2))))
    return out


def by_function(text, header):
    """(architecture, function, line) for each line of cuobjdump's output that follows a function
    header (the regex ``header``, the mangled name its group); line None for the header itself."""
    arch = name = None
    for line in text.splitlines():
        m = re.match(r'\s*arch = (sm_\w+)', line)
        if m:
            arch = m.group(1)
            continue
        m = re.match(header, line)
        if m:
            name = m.group(1)
            yield arch, name, None
        elif name is not None:
            yield arch, name, line


def blocks_per_sm(registers, threads, max_blocks=32, max_warps=64, register_file=65536):
    """Resident blocks per SM that the registers allow (sm_80 / sm_90 limits: registers are
    allocated per warp in units of 256; shared memory not counted)."""
    warps = -(-threads // 32)
    per_warp = -(-registers * 32 // 256) * 256
    return min(max_blocks, max_warps // warps, register_file // (warps * per_warp))


def parse(text):
    kernels = []
    for arch, name, line in by_function(text, r'\s*Function : (\S+)'):
        if line is None:
            kernels.append(Kernel(arch, name))
            continue
        m = re.match(r'\s*/\*([0-9a-f]{4,})\*/\s+(.*?);', line)
        if m:
            text_ = re.sub(r'^@!?U?P\w+\s+', '', m.group(2).strip())  # drop the predicate
            kernels[-1].instrs.append((int(m.group(1), 16), text_.split()[0], text_))
    if not kernels:
        raise ValueError('no kernels in the cuobjdump output: is this a CUDA build of the op?')
    for k, name in zip(kernels, demangle([k.mangled for k in kernels])):
        k.name = name
    return kernels


def summarize(k):
    """One row of the report: the facts above for kernel k."""
    hot = k.hot_loop()
    row = dict(arch=k.arch, kernel=k.name.split('(')[0].replace('void ', ''),
               registers=k.registers, stack=k.stack,
               local=k.count(lambda op: op.split('.')[0] in ('LDL', 'STL')),
               stg128=k.count(lambda op: op.startswith('STG') and op.endswith('.128')))
    if hot:
        lo, hi, nested = hot
        ffma, lds = k.count(is_ffma, lo, hi, nested), k.count(is_lds, lo, hi, nested)
        total = k.count(lambda op: True, lo, hi, nested)
        row.update(ffma=ffma, hmma=k.count(is_hmma, lo, hi, nested), lds=lds, total=total,
                   ffma_share=ffma / total, lds_per_ffma=lds / ffma if ffma else None)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--so', default=None, help='the extension (default mmunirep/_ext*.so)')
    parser.add_argument('--arch', default=None, help='e.g. sm_90 (default: every one built)')
    parser.add_argument('--out', default=None, help='also write the table to this file')
    args = parser.parse_args(argv)
    so = args.so or find_extension()
    if so is None or not os.path.exists(so):
        sys.exit('sass_report: no extension: build it first (bash tools/build_ops.sh)')
    rows = [summarize(k) for k in disassemble(so, args.arch)]
    lines = ['| arch | kernel | registers | stack | LDL/STL | STG.128 | hot loop FFMA | HMMA | '
             'LDS | instructions | FFMA share | LDS per FFMA |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in sorted(rows, key=lambda r: (r['arch'], r['kernel'])):
        per_ffma = f"{r['lds_per_ffma']:.2f}" if r.get('lds_per_ffma') is not None else '-'
        hot = (f"{r['ffma']} | {r['hmma']} | {r['lds']} | {r['total']} | "
               f"{r['ffma_share']:.0%} | {per_ffma}" if 'ffma' in r else '- | - | - | - | - | -')
        lines.append(f"| {r['arch']} | `{r['kernel']}` | {r['registers']} | {r['stack']} | "
                     f"{r['local']} | {r['stg128']} | {hot} |")
    print('\n'.join(lines))
    if args.out:
        with open(args.out, 'w') as f:
            f.write(header(so, argv if argv is not None else sys.argv[1:]))
            f.write('\n'.join(lines) + '\n')


def tool_version(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 'unknown'
    found = re.findall(r'release [\d.]+, V[\d.]+', out)
    return found[-1] if found else 'unknown'


def header(so, argv):
    """What the table is, and how it was made (written above it by --out)."""
    import torch
    try:
        sources = subprocess.run(['git', 'log', '-1', '--format=%h', '--', 'ops/csrc'], cwd=ROOT,
                                 capture_output=True, text=True).stdout.strip() or 'unknown'
    except OSError:  # no git (a GPU machine given a copy of the tree)
        sources = 'unknown'
    return (
        '# Static SASS report of the op\'s kernels: not a measurement\n\n'
        'What nvcc made of the kernels, read from the machine code '
        '(`benchmarks/sass_report.py`; no GPU involved).\n\n'
        f'- sources: ops/csrc as of commit {sources}; extension `{os.path.basename(so)}` built '
        f'by `tools/build_ops.sh` with nvcc {tool_version(["nvcc", "--version"])}, torch '
        f'{torch.__version__}\n'
        f'- disassembler: cuobjdump {tool_version([find_cuobjdump(), "--version"])}\n'
        f'- command: `python benchmarks/sass_report.py {" ".join(argv)}`\n\n'
        'Reading it: an SM sub-partition issues one instruction per cycle and takes one warp FFMA '
        'per cycle, so the FFMA share of a hot loop bounds the fraction of the fp32 FMA peak that '
        'loop can reach, before memory stalls, tile staging and partial tiles. A conflict-free '
        'warp LDS takes one of the SM\'s one-per-cycle shared-memory wavefronts against four warp '
        'FFMAs, so LDS per FFMA under 0.25 keeps shared memory from binding; the loads of these '
        'loops are conflict-free by a compile-time check (TileShape::forward_bank_ways / '
        'weight_grad_bank_ways). Weight-gradient rows count the item loop without its nested '
        'staging loops. The tensor-core weight gradient (`weight_grad_tc`, '
        'MMUNIREP_DWCONV_WGRAD_TC=1) has HMMAs (two per 16x16x16 wmma product) where the others '
        'have FFMAs, and LDSM (its fragment loads) among its LDS. Whole-map tiles (`TileShape<..., true>`, maps of at most 8x8 or 16x16) '
        'leave out the FMAs on the padding left and right of the tile (62 per row of 8 outputs '
        'at K = 13, not 8 * 13), so a lower FFMA share there can be less work, not worse code. '
        'Registers per thread and stack bytes (spills) from `cuobjdump -res-usage`. '
        'LDL/STL: local-memory instructions (spills).\n\n')


if __name__ == '__main__':
    main()
