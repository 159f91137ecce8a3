"""What the compiled depthwise-conv kernels' machine code (SASS) does, read without a GPU.

It disassembles the extension with cuobjdump (the CUDA toolkit's, or pip's nvidia-cuda-cuobjdump
with nvidia-cuda-nvdisasm, which requirements/dev.txt installs) and tells, for each kernel:
- local-memory instructions (LDL / STL: register spills, or arrays the compiler could not keep in
  registers);
- its hot loop, the loop with the most FFMAs (outside the loops nested in it, which the weight-
  gradient kernels' tile staging is): its FFMA, shared-memory load (LDS) and total instruction
  counts, nested loops left out. An SM sub-partition issues one instruction per cycle and its FP32
  units take one FFMA per cycle, so the FFMA share of the hot loop bounds the fraction of the fp32
  FMA peak that loop can reach; LDS per FFMA says how hard it leans on shared memory (a conflict-
  free LDS of a warp takes one of the SM's one-per-cycle shared-memory wavefronts, against four
  FFMAs);
- whether it writes global memory with 16-byte stores (STG.E.128).
These are static facts about the code, not measurements: benchmarks/dwconv_benchmark.py measures.
No tool of the field reads SASS loops this way (cuobjdump / nvdisasm only print them), hence this
module. test_sass.py checks the properties the kernels are written for.
"""

import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class Kernel:
    arch: str
    mangled: str
    name: str = ''
    instrs: list = field(default_factory=list)  # (address, opcode with modifiers, text)

    def count(self, pred, lo=0, hi=1 << 62, skip=()):
        """Instructions in [lo, hi], outside the ranges `skip`, whose opcode satisfies pred."""
        return sum(
            1
            for a, op, _ in self.instrs
            if lo <= a <= hi and pred(op) and not any(s <= a <= e for s, e in skip)
        )

    def loops(self):
        """(start, end) of each loop: a branch back to an earlier address."""
        out = []
        for a, op, text in self.instrs:
            m = re.search(r'\bBRA\b.*?0x([0-9a-f]+)', text)
            if op == 'BRA' and m and int(m.group(1), 16) <= a:
                out.append((int(m.group(1), 16), a))
        return out

    def hot_loop(self):
        """(start, end, nested loops) of the loop with the most FFMAs outside its nested loops
        (the staging loops inside a weight-gradient item loop are counted on their own), the
        innermost of equals; None without FFMA loops."""
        loops, best = self.loops(), None
        for lo, hi in loops:
            nested = [(a, b) for a, b in loops if lo <= a and b <= hi and (a, b) != (lo, hi)]
            key = (self.count(is_ffma, lo, hi, nested), -(hi - lo))
            if key[0] and (best is None or key > best[0]):
                best = (key, (lo, hi, nested))
        return None if best is None else best[1]


def is_ffma(op):
    return op.split('.')[0] == 'FFMA'


def is_lds(op):
    return op.split('.')[0] == 'LDS'


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
    out = subprocess.run(
        ['c++filt'], input='\n'.join(names), capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return [re.sub(r'mmunirep::|c10::', '', n) for n in out]


def disassemble(so, arch=None, cuobjdump=None):
    """The kernels of the extension `so` ([Kernel]), for one architecture or all."""
    tool = cuobjdump or find_cuobjdump()
    if tool is None:
        raise FileNotFoundError(
            'cuobjdump not found: install the CUDA toolkit or `pip install nvidia-cuda-cuobjdump '
            'nvidia-cuda-nvdisasm` (requirements/dev.txt), or set CUDA_HOME'
        )
    cmd = [tool, '-sass'] + (['-arch', arch] if arch else []) + [so]
    text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return parse(text)


def parse(text):
    kernels, cur_arch, cur = [], None, None
    for line in text.splitlines():
        m = re.match(r'\s*arch = (sm_\w+)', line)
        if m:
            cur_arch = m.group(1)
            continue
        m = re.match(r'\s*Function : (\S+)', line)
        if m:
            cur = Kernel(cur_arch, m.group(1))
            kernels.append(cur)
            continue
        m = re.match(r'\s*/\*([0-9a-f]{4,})\*/\s+(.*?);', line)
        if m and cur is not None:
            text_ = re.sub(r'^@!?U?P\w+\s+', '', m.group(2).strip())  # drop the predicate
            cur.instrs.append((int(m.group(1), 16), text_.split()[0], text_))
    if not kernels:
        raise ValueError('no kernels in the cuobjdump output: is this a CUDA build of the op?')
    for k, name in zip(kernels, demangle([k.mangled for k in kernels])):
        k.name = name
    return kernels


def summarize(k):
    """One row of the report: the facts above for kernel k."""
    hot = k.hot_loop()
    row = dict(
        arch=k.arch,
        kernel=k.name.split('(')[0].replace('void ', ''),
        local=k.count(lambda op: op.split('.')[0] in ('LDL', 'STL')),
        stg128=k.count(lambda op: op.startswith('STG') and op.endswith('.128')),
    )
    if hot:
        lo, hi, nested = hot
        ffma, lds = k.count(is_ffma, lo, hi, nested), k.count(is_lds, lo, hi, nested)
        total = k.count(lambda op: True, lo, hi, nested)
        row.update(
            ffma=ffma, lds=lds, total=total, ffma_share=ffma / total, lds_per_ffma=lds / ffma
        )
    return row
