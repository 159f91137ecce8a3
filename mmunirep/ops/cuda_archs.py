"""Which GPUs a build of the extension runs on: the default ``TORCH_CUDA_ARCH_LIST`` of
``setup.py`` and the words for a GPU that a build lacks.

CUDA's rules: machine code (SASS) for compute capability X.Y runs on X.Z for Z >= Y (same major),
except arch-specific code (``9.0a``), which runs on 9.0 alone; PTX for X.Y (``X.Y+PTX``) is
compiled by the driver, at first use, for any newer GPU. ``setup.py`` loads this file by its path
(it imports nothing but the standard library at module level), so that the build does not import
the package; ``python mmunirep/ops/cuda_archs.py`` prints the default for this machine, which
``scripts/build_ops.sh`` and ``scripts/install.sh`` (for mmcv's CUDA ops too) build for.
"""

import re
from typing import Iterable, List, NamedTuple, Tuple

# A100, RTX 30xx / A10 / A40 (and by compatibility RTX 40xx / L4 / L40, 8.9), H100 / H200; PTX of
# 9.0 lets the driver compile the kernels for newer GPUs (Blackwell: 10.0, 12.0) at first use.
DEFAULT_CUDA_ARCHS = '8.0;8.6;9.0+PTX'

_ENTRY = re.compile(r'^(\d+)\.(\d+)(a?)(\+PTX)?$')


class Arch(NamedTuple):
    major: int
    minor: int
    specific: bool  # 'a': machine code for this exact capability only, and no PTX for others
    ptx: bool

    def runs_natively_on(self, capability: Tuple[int, int]) -> bool:
        major, minor = capability
        if self.specific:
            return (self.major, self.minor) == (major, minor)
        return self.major == major and self.minor <= minor

    def runs_on(self, capability: Tuple[int, int]) -> bool:
        """Natively, or through its PTX, which the driver compiles for newer GPUs."""
        return self.runs_natively_on(capability) or (
            self.ptx and not self.specific and (self.major, self.minor) <= tuple(capability)
        )


def parse_arch_list(spec: str) -> List[Arch]:
    """``'8.0;8.6;9.0+PTX'`` (entries separated by ``;`` or spaces, as torch reads
    ``TORCH_CUDA_ARCH_LIST``) into :class:`Arch` entries. Named architectures ('Ampere') and
    'native' are torch's business: they raise ``ValueError`` here."""
    entries = [e for e in spec.replace(' ', ';').split(';') if e]
    archs = []
    for entry in entries:
        m = _ENTRY.match(entry)
        if m is None:
            raise ValueError(
                f'expected CUDA architectures like "8.6" or "9.0+PTX", got {entry!r} in {spec!r}'
            )
        archs.append(Arch(int(m.group(1)), int(m.group(2)), bool(m.group(3)), bool(m.group(4))))
    return archs


def arch_list_for(
    capabilities: Iterable[Tuple[int, int]],
    default: str = DEFAULT_CUDA_ARCHS,
    newest: Tuple[int, int] = (99, 9),
) -> str:
    """``default``, plus machine code for each of ``capabilities`` (the GPUs visible at build time)
    that none of its entries runs natively on: their kernels are then ready at the first call,
    not compiled from PTX by the driver. ``newest``: the highest capability the toolkit builds
    for (torch's own list clamps to it); a newer GPU keeps the default's PTX."""
    archs = parse_arch_list(default)
    extra = []
    for cap in sorted(set(tuple(c) for c in capabilities)):
        cap = min(cap, tuple(newest))
        if not any(a.runs_natively_on(cap) for a in archs) and cap not in extra:
            extra.append(cap)
    return ';'.join([default.strip(';')] + [f'{major}.{minor}' for major, minor in extra])


def default_arch_list() -> str:
    """``TORCH_CUDA_ARCH_LIST`` when it is unset: :data:`DEFAULT_CUDA_ARCHS` plus machine code for
    each visible GPU that it does not run on natively (a build on a Blackwell or Turing machine
    is then ready for it at its first call). Torch's own default would build for the visible GPUs
    alone."""
    import torch

    visible = [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
    # torch clamps a visible GPU to the newest capability its build (and so its nvcc) knows
    known = [
        int(m.group(1)) for m in map(re.compile(r'sm_(\d+)').match, torch.cuda.get_arch_list()) if m
    ]
    newest = (max(known) // 10, max(known) % 10) if known else (99, 9)
    return arch_list_for(visible, newest=newest)


def describe_built_archs(cuda_arch_list: str) -> str:
    """nvcc's ``__CUDA_ARCH_LIST__`` as the extension reports it (``'800,860,900'``) in
    capability form (``'8.0, 8.6, 9.0'``); 'unknown' if empty."""
    values = [int(v) for v in cuda_arch_list.split(',') if v.strip()]
    if not values:
        return 'unknown architectures'
    return ', '.join(f'{v // 100}.{v % 100 // 10}' for v in values)


def missing_kernels_message(
    device_name: str, capability: Tuple[int, int], built: str, cuda_error: str
) -> str:
    """Why the op falls back on this GPU, and the command that builds the kernels for it."""
    major, minor = capability
    return (
        f'no kernels for {device_name} (compute capability {major}.{minor}) in this build of '
        f'mmunirep._ext, made for {describe_built_archs(built)} ({cuda_error}); build them '
        f'for it with `TORCH_CUDA_ARCH_LIST="{major}.{minor}" bash scripts/build_ops.sh`'
    )


if __name__ == '__main__':  # for the shell scripts, which read the list from stdout
    import sys

    sys.stdout.write(default_arch_list() + '\n')
