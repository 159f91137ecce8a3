"""Loading checkpoints under torch's ``weights_only=True`` default (torch >= 2.6).

mmengine writes a few non-tensor objects into its checkpoints (the message hub's
``HistoryBuffer`` of numpy arrays, numpy scalars in meta), which torch's safe unpickler refuses,
so resuming a run fails. :func:`allow_mmengine_checkpoint_types` allow-lists exactly those data
types (nothing that can run code). mmengine's local-file loader is replaced by
:func:`load_local_checkpoint`, which keeps ``weights_only=True`` and, when a file needs anything
else, refuses it with a message that says how to allow it explicitly
(``MMUNIREP_UNSAFE_LOAD=1``, for files you trust).
"""
import os
import os.path as osp
import pickle

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

UNSAFE_ENV = 'MMUNIREP_UNSAFE_LOAD'


def _history_buffer_method(owner, name: str):
    """Stands in for ``getattr`` while unpickling: a HistoryBuffer pickles its statistics methods
    as ``getattr(HistoryBuffer, 'mean')``. A general ``getattr`` would let a file reach any
    attribute (and so run code); this one reaches only HistoryBuffer's own public methods."""
    if owner is not HistoryBuffer or name.startswith('_') or not callable(
            getattr(HistoryBuffer, name, None)):
        raise pickle.UnpicklingError(f'refusing getattr({owner!r}, {name!r}) in a checkpoint')
    return getattr(HistoryBuffer, name)


def allow_mmengine_checkpoint_types() -> None:
    """Allow-list the data types mmengine and mmdet/mmseg put into their checkpoints."""
    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    safe = [HistoryBuffer, multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype,
            (_history_buffer_method, 'builtins.getattr')]
    safe += [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith('DType')]
    torch.serialization.add_safe_globals(safe)


def load_local_checkpoint(filename: str, map_location=None):
    """mmengine's local loader with an explicit, explained ``weights_only`` policy."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint not found: {filename!r}')
    if os.environ.get(UNSAFE_ENV) == '1':
        return torch.load(filename, map_location=map_location, weights_only=False)
    try:
        return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise RuntimeError(
            f'{filename} holds objects that torch will not unpickle safely (weights_only=True); '
            f'loading it could run arbitrary code. If you trust the file, allow it explicitly '
            f'with the environment variable {UNSAFE_ENV}=1. torch said: '
            f'{str(e).splitlines()[-3] if len(str(e).splitlines()) > 2 else e}') from e


def install() -> None:
    allow_mmengine_checkpoint_types()
    CheckpointLoader.register_scheme(prefixes='', loader=load_local_checkpoint, force=True)
