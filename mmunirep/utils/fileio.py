"""Writing the tools' outputs whole or not at all.

Each output is written to a temporary file in its destination's folder and renamed into place
only once it is complete (and checked, where the tool checks it): a failed write (a full disk, a
killed process, a failed check) leaves any earlier file of that name as it was and no partial
one. A rename within a folder is atomic on POSIX file systems, which mmengine's and torch's own
savers do not rely on (they write in place).
"""

import contextlib
import os
import os.path as osp
import shutil
import tempfile
from typing import Iterator

import torch

from .checkpoint import UNSAFE_ENV


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def same_path(a: str, b: str) -> bool:
    """Whether two paths name the same file (also through links or relative paths)."""
    if osp.exists(a) and osp.exists(b):
        return osp.samefile(a, b)
    return osp.realpath(a) == osp.realpath(b)


def refuse_overwriting_input(
    output: str, inputs, flag: str = '--overwrite-input', allowed: bool = False
) -> None:
    """Raise if ``output`` is one of ``inputs``, unless ``allowed`` (the tool's ``flag``)."""
    for path in inputs:
        if path and '://' not in str(path) and same_path(output, path) and not allowed:
            raise ValueError(
                f'the output {output} is the input {path}: write to another path, '
                f'or pass {flag} to replace the input (it is then replaced only '
                'once the new file is complete)'
            )


@contextlib.contextmanager
def atomic_write(path: str, keep: bool = True) -> Iterator[str]:
    """Yield a temporary path beside ``path``; when the block ends without an error the file
    written there becomes ``path``, otherwise it is removed. ``keep=False`` removes it in either
    case: the processes of a distributed run that do not write the file."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # the temporary name keeps the extension: some writers check it (mmengine's DumpResults)
    fd, tmp = tempfile.mkstemp(
        prefix=f'.{osp.basename(path)}.', suffix='.tmp' + osp.splitext(path)[1], dir=folder
    )
    os.close(fd)
    try:
        yield tmp
        if not keep:
            os.remove(tmp)
            return
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's file is private; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(path: str) -> Iterator[str]:
    """Yield a temporary folder beside ``path``; when the block ends without an error the files
    written there move into ``path`` (created if needed; files of the same name replaced),
    otherwise the folder is removed."""
    parent = osp.dirname(osp.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{osp.basename(osp.abspath(path))}.', suffix='.tmp', dir=parent)
    try:
        yield tmp
        os.makedirs(path, exist_ok=True)
        for base, _, files in os.walk(tmp):
            target = osp.join(path, osp.relpath(base, tmp))
            os.makedirs(target, exist_ok=True)
            for name in files:
                os.replace(osp.join(base, name), osp.join(target, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_checkpoint(checkpoint: dict, path: str) -> None:
    """``torch.save`` whole or not at all: written beside ``path``, read back (its state dict's
    names and shapes must be those saved), then renamed into place."""
    expected = {
        k: tuple(v.shape)
        for k, v in checkpoint.get('state_dict', {}).items()
        if isinstance(v, torch.Tensor)
    }
    with atomic_write(path) as tmp:
        try:
            torch.save(checkpoint, tmp)
        except (OSError, RuntimeError) as e:  # torch's C++ writer raises RuntimeError
            raise OSError(
                f'could not write {path} ({e}): is the disk full, or a file-size limit '
                'reached? Nothing was replaced'
            ) from e
        # read as the tools read checkpoints: unsafely only where asked
        unsafe = os.environ.get(UNSAFE_ENV) == '1'
        written = torch.load(tmp, map_location='cpu', weights_only=not unsafe, mmap=True)
        got = {
            k: tuple(v.shape)
            for k, v in written.get('state_dict', {}).items()
            if isinstance(v, torch.Tensor)
        }
        if got != expected:
            raise OSError(f'{path}: the checkpoint read back differs from the one written')


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all."""
    with atomic_write(path) as tmp:
        with open(tmp, 'w') as f:
            f.write(text)
