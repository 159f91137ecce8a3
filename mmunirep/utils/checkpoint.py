"""Reading checkpoints and fitting them to models: the one loading path of the backbone and tools.

- :func:`load_checkpoint_file` reads a local file under torch's ``weights_only=True`` and, when it
  cannot, says what the file is: not a checkpoint (empty, truncated, another format), or one that
  holds objects only unsafe loading can rebuild (``MMUNIREP_UNSAFE_LOAD=1``, for files you trust).
  :func:`install` makes it mmengine's loader of local files, so the Runner and the frameworks'
  inferencers read through it too.
- :func:`model_state_dict` and :func:`backbone_state_dict` take the tensors out of the layouts of
  the authors' and OpenMMLab's checkpoints; :func:`check_finite` refuses NaN and Inf.
- :func:`backbone_structure` and :func:`structure_mismatch` tell the backbone's training and
  re-parameterized (deploy) structures and its two kinds of stem norm apart.
- :func:`load_model_weights` loads a checkpoint into a whole detector or segmentor: every tensor
  must fit, but for the differences :data:`ALLOWED_DIFFERENCES` allows, and an error counts and
  names what does not fit and says which setting or config would.
"""

import os
import os.path as osp
import pickle
import re
import zipfile
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from mmengine.logging import HistoryBuffer, print_log
from mmengine.runner.checkpoint import CheckpointLoader

UNSAFE_ENV = 'MMUNIREP_UNSAFE_LOAD'
# the keys that tell the backbone's structures apart: the re-parameterized block's second linear
# layer has a bias; the training block's has a BatchNorm after it, and dilated branches
DEPLOY_KEY = 'pwconv2.0.bias'
TRAINING_KEYS = ('pwconv2.2.weight', 'origin_bn')
STEM_NORM = 'downsample_layers.0.1.'


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used as asked, with what it is and what would fit."""


# ---------------------------------------------------------------------------------------------
# reading a file
# ---------------------------------------------------------------------------------------------
def _history_buffer_method(owner, name: str):
    """Stands in for ``getattr`` while unpickling: a HistoryBuffer pickles its statistics methods
    as ``getattr(HistoryBuffer, 'mean')``. A general ``getattr`` would let a file reach any
    attribute (and so run code); this one reaches only HistoryBuffer's own public methods."""
    if (
        owner is not HistoryBuffer
        or name.startswith('_')
        or not callable(getattr(HistoryBuffer, name, None))
    ):
        raise pickle.UnpicklingError(f'refusing getattr({owner!r}, {name!r}) in a checkpoint')
    return getattr(HistoryBuffer, name)


def allow_mmengine_checkpoint_types() -> None:
    """Allow-list the data types (nothing that runs code) that mmengine and MMDetection /
    MMSegmentation write into their checkpoints: the message hub's HistoryBuffer of numpy arrays
    and numpy scalars in meta, which torch's safe unpickler refuses, so that resuming works."""
    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    safe = [
        HistoryBuffer,
        multiarray._reconstruct,
        multiarray.scalar,
        np.ndarray,
        np.dtype,
        (_history_buffer_method, 'builtins.getattr'),
    ]
    safe += [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith('DType')]
    torch.serialization.add_safe_globals(safe)


def _unsafe_globals(filename: str, error: Exception) -> Optional[List[str]]:
    """What other than tensors and plain data a well-formed checkpoint holds (the objects torch's
    safe loader refused), or None if the file is not a well-formed checkpoint."""
    if zipfile.is_zipfile(filename):  # torch.save's format since torch 1.6
        try:
            found = list(torch.serialization.get_unsafe_globals_in_checkpoint(filename))
        except Exception:
            return None  # a damaged archive
        # none listed: an allowed global refused its arguments (getattr of a private method)
        return found or [_first_line(error)]
    # the legacy format: torch names the first global it refused; a truncated file names a
    # truncated one, which does not import
    found = re.search(r'Unsupported global: GLOBAL ([\w.]+)', str(error))
    if not found:
        return None
    module, _, name = found.group(1).rpartition('.')
    try:
        getattr(__import__(module, fromlist=[name]), name)
    except Exception:
        return None
    return [found.group(1)]


def _describe_bytes(filename: str) -> str:
    with open(filename, 'rb') as f:
        head = f.read(256)
    if head[:1] == b'\x80':
        return 'a Python pickle, not a file written by torch.save (e.g. a results .pkl)'
    if head.startswith(b'PK'):
        return 'a zip archive, but not one written by torch.save'
    if head and all(32 <= b < 127 or b in b'\t\r\n' for b in head):
        return 'a text file'
    return 'not a file written by torch.save'


def load_checkpoint_file(filename: str, map_location=None):
    """``torch.load`` of a local file with ``weights_only=True`` (``MMUNIREP_UNSAFE_LOAD=1``:
    ``False``), raising :class:`CheckpointError` with what the file is when it cannot load."""
    filename = osp.expanduser(str(filename))
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint not found: {filename!r}')
    if osp.getsize(filename) == 0:
        raise CheckpointError(
            f'{filename} is empty (0 bytes): not a checkpoint (was it written completely?)'
        )
    unsafe = os.environ.get(UNSAFE_ENV) == '1'
    try:
        return torch.load(filename, map_location=map_location, weights_only=not unsafe)
    except Exception as error:
        if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise
        objects = None if unsafe else _unsafe_globals(filename, error)
        if objects:
            raise CheckpointError(
                f'{filename} is a PyTorch checkpoint that holds objects other than tensors and '
                f'plain data ({", ".join(objects[:5])}); loading it can run code from the file. '
                f'If you trust the file, allow it explicitly with the environment variable '
                f'{UNSAFE_ENV}=1'
            ) from error
        if zipfile.is_zipfile(filename) or _is_torch_file(filename):
            what = 'a truncated or damaged PyTorch checkpoint (was it written completely?)'
        else:
            what = _describe_bytes(filename)
        raise CheckpointError(
            f'{filename} cannot be read as a checkpoint: it is {what}. '
            f'torch said: {_first_line(error)}'
        ) from error


def _is_torch_file(filename: str) -> bool:
    """Whether the file starts as torch.save's files do: a zip archive's first record named
    ``<archive>/data.pkl``, or the legacy format's pickled magic number."""
    with open(filename, 'rb') as f:
        head = f.read(64)
    if head.startswith(b'PK\x03\x04'):
        name_length = int.from_bytes(head[26:28], 'little')
        return head[30 : 30 + name_length].endswith(b'/data.pkl')
    return head[:14] == b'\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19'


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:300]


def install() -> None:
    """Make :func:`load_checkpoint_file` mmengine's loader of local files."""
    allow_mmengine_checkpoint_types()
    CheckpointLoader.register_scheme(prefixes='', loader=load_checkpoint_file, force=True)


def read_checkpoint(checkpoint: str, map_location='cpu') -> dict:
    """A checkpoint file or URL (through mmengine's loaders) as a dict."""
    ckpt = CheckpointLoader.load_checkpoint(checkpoint, map_location=map_location)
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f'{checkpoint} holds a {type(ckpt).__name__}, not a checkpoint '
            '(a dict of tensors, or one with a "state_dict" or "model" entry)'
        )
    return ckpt


# ---------------------------------------------------------------------------------------------
# the tensors of a checkpoint
# ---------------------------------------------------------------------------------------------
def _strip(key: str, prefix: str) -> str:
    return key[len(prefix) :] if key.startswith(prefix) else key


def model_state_dict(ckpt: dict, source: str = 'checkpoint') -> Dict[str, torch.Tensor]:
    """The model's tensors: ``ckpt['state_dict']``, ``ckpt['model']`` or ``ckpt`` itself, without
    distributed wrappers' ``module.`` prefixes. Raises if there are none."""
    state = ckpt
    for key in ('state_dict', 'model'):
        if isinstance(ckpt.get(key), dict):
            state = ckpt[key]
            break
    tensors = {_strip(k, 'module.'): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f'{source} holds no model tensors (top-level entries: {sorted(ckpt)[:8]}): is it an '
            'optimizer state, a results file, or a checkpoint saved without its model?'
        )
    return tensors


def backbone_state_dict(
    ckpt: dict, source: str = 'checkpoint', prefix: Optional[str] = None
) -> Dict[str, torch.Tensor]:
    """A UniRepLKNet's tensors from the authors' classification checkpoints or a detector's /
    segmentor's: only the keys under ``prefix`` if given (as mmengine's ``Pretrained`` init, e.g.
    ``'teacher.backbone.'``), else those under ``backbone.`` where there are any; the
    classification ``head.*`` and final ``norm.*`` left out."""
    state = model_state_dict(ckpt, source)
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise CheckpointError(
                f'{source}: no key starts with the init_cfg prefix {prefix!r}; '
                f'it has e.g. {sorted(model_state_dict(ckpt, source))[:5]}'
            )
    elif any(k.startswith('backbone.') for k in state):
        state = {k[len('backbone.') :]: v for k, v in state.items() if k.startswith('backbone.')}
    return {k: v for k, v in state.items() if not k.startswith(('head.', 'norm.'))}


def check_finite(state: Dict[str, torch.Tensor], source: str = 'checkpoint') -> None:
    """Raise if any floating-point tensor holds NaN or Inf, naming the first ones."""
    bad = []
    for name, tensor in state.items():
        if tensor.is_floating_point() or tensor.is_complex():
            n = int((~torch.isfinite(tensor)).sum())
            if n:
                bad.append(f'{name} ({n} of {tensor.numel()} values)')
    if bad:
        raise CheckpointError(
            f'{source} holds NaN or Inf in {len(bad)} tensors, e.g. {", ".join(bad[:5])}: the '
            'weights of a diverged run cannot be evaluated, exported or trained from'
        )


# ---------------------------------------------------------------------------------------------
# the backbone's structures
# ---------------------------------------------------------------------------------------------
def backbone_structure(keys: Iterable[str]) -> Tuple[Optional[str], Optional[str]]:
    """(``'deploy'`` / ``'training'`` / None, ``'BN'`` / ``'LN'`` / None): the structure of the
    UniRepLKNet blocks and the kind of stem norm of a backbone's keys (None: not told)."""
    keys = list(keys)
    deploy = any(k.endswith(DEPLOY_KEY) for k in keys)
    training = any(k.endswith(TRAINING_KEYS[0]) or TRAINING_KEYS[1] in k for k in keys)
    structure = 'deploy' if deploy and not training else 'training' if training else None
    stem = [k for k in keys if STEM_NORM in k]
    norm = None
    if any(k.endswith(STEM_NORM + 'weight') for k in stem):
        norm = 'BN' if any(k.endswith(STEM_NORM + 'running_mean') for k in stem) else 'LN'
    return structure, norm


def structure_mismatch(
    checkpoint_keys: Iterable[str], model_keys: Iterable[str], key_prefix: str = 'model.backbone.'
) -> Optional[str]:
    """What a checkpoint's backbone needs that the model's lacks, as the setting that fits (with
    its ``key_prefix``, e.g. ``'model.backbone.'`` of a config), or None if they agree."""
    have, want = backbone_structure(checkpoint_keys), backbone_structure(model_keys)
    if have[0] and want[0] and have[0] != want[0]:
        if have[0] == 'deploy':
            return (
                f'the checkpoint is in the re-parameterized (deploy) structure and the model '
                f'in the training structure: build it with {key_prefix}deploy=True'
            )
        return (
            f'the checkpoint is in the training structure and the model in the deploy '
            f'structure: build it with {key_prefix}deploy=False (or convert the checkpoint '
            f'with tools/model_converters/reparameterize.py)'
        )
    if have[1] and want[1] and have[1] != want[1]:
        if have[1] == 'BN':
            return (
                f"the checkpoint has BatchNorm in the backbone's stem and down-sampling "
                f"layers (as the detection quick start), the model LayerNorm (the paper's): "
                f"build it with {key_prefix}downsample_norm_cfg=dict(type='BN')"
            )
        return (
            f"the checkpoint has LayerNorm in the backbone's stem and down-sampling layers "
            f"(the paper's), the model BatchNorm: build it with "
            f'{key_prefix}downsample_norm_cfg=None'
        )
    return None


# ---------------------------------------------------------------------------------------------
# fitting a checkpoint to a whole model
# ---------------------------------------------------------------------------------------------
# The keys in which a checkpoint and the model it is loaded into may differ, and why. Rules marked
# `inference` apply only when the model is loaded to be run (tests, demos, export), not when a
# checkpoint is converted or re-parameterized, where every key must land.
ALLOWED_DIFFERENCES = (
    # (checkpoint-only / model-only / either, key pattern, inference only, why)
    ('checkpoint', r'^ema_', False, "MMDetection 2's EMA hook's buffers (ema_<name>)"),
    (
        'either',
        r'^data_preprocessor\.',
        False,
        'the data pre-processor (its mean / std are not weights)',
    ),
    (
        'model',
        r'\.num_batches_tracked$',
        False,
        "BatchNorm's batch counters (not saved by old torch)",
    ),
    ('either', r'^auxiliary_head\.', True, "the segmentor's auxiliary head (training only)"),
)
_HEADS = {'detector': ('rpn_head.', 'roi_head.', 'bbox_head.'), 'segmentor': ('decode_head.',)}


def _allowed(key: str, side: str, inference: bool) -> bool:
    return any(
        where in (side, 'either') and re.search(pattern, key) and (inference or not only)
        for where, pattern, only, _ in ALLOWED_DIFFERENCES
    )


def _kind(keys) -> Optional[str]:
    """'detector', 'segmentor', 'classifier' (the authors' ImageNet layout) or None."""
    for kind, prefixes in _HEADS.items():
        if any(k.startswith(prefixes) for k in keys):
            return kind
    if any(k.startswith('stages.') for k in keys):
        return 'classifier'
    return None


def _backbone_arch(state: Dict[str, torch.Tensor], prefix: str = 'backbone.') -> Optional[str]:
    """The UniRepLKNet variant whose dims and depths a state dict's backbone has, or None."""
    from mmunirep.models.backbones.unireplknet import ARCH_SETTINGS

    try:
        dims = tuple(
            int(state[f'{prefix}downsample_layers.{i}.{3 if i == 0 else 0}.weight'].shape[0])
            for i in range(4)
        )
    except KeyError:
        return None
    blocks = [k[len(prefix) :].split('.')[1:3] for k in state if k.startswith(prefix + 'stages.')]
    depths = tuple(
        1 + max((int(j) for s, j in blocks if int(s) == i), default=-1) for i in range(4)
    )
    for name, setting in ARCH_SETTINGS.items():
        if tuple(setting['dims']) == dims and tuple(setting['depths']) == depths:
            return name
    return None


def _advice(
    own: Dict[str, torch.Tensor],
    state: Dict[str, torch.Tensor],
    mismatched: List[str],
    cfg_hint: str,
) -> List[str]:
    """Which setting or config would fit the checkpoint, where that can be told."""
    have, want = _kind(state), _kind(own)
    if have and want and have != want:
        if have == 'classifier':
            return [
                'it is an ImageNet classification checkpoint of the backbone: load it as the '
                "backbone's pretrained weights (model.backbone.init_cfg=dict("
                "type='Pretrained', checkpoint=...)), then train"
            ]
        framework = {'detector': 'an MMDetection', 'segmentor': 'an MMSegmentation'}.get(have)
        return [
            f"it is a {have}'s checkpoint and the config builds a {want}: use it with "
            f'{framework} config, or start from its backbone: model.backbone.init_cfg='
            "dict(type='Pretrained', checkpoint=..., prefix='backbone.')"
        ]
    advice = []
    structure = structure_mismatch(
        [k for k in state if k.startswith('backbone.')],
        [k for k in own if k.startswith('backbone.')],
        cfg_hint,
    )
    if structure:
        return [structure]
    arch_have, arch_want = _backbone_arch(state), _backbone_arch(own)
    if arch_have and arch_want and arch_have != arch_want:
        advice.append(
            f"its backbone is UniRepLKNet-{arch_have.upper()} and the config's "
            f'UniRepLKNet-{arch_want.upper()}: use a config of arch '
            f"'{arch_have}' (mmunirep's are named unireplknet_{arch_have}_*), or set "
            f"{cfg_hint}arch='{arch_have}' and the neck's / heads' in_channels"
        )
    for key in mismatched:
        if re.search(r'(conv_seg|fc_cls|conv_logits|conv_cls)\.weight$', key):
            n_have, n_want = state[key].shape[0], own[key].shape[0]
            extra = 1 if 'fc_cls' in key else 0  # MMDetection's background class
            advice.append(
                f'it predicts {n_have - extra} classes ({key}), the config '
                f"{n_want - extra}: set the heads' num_classes={n_have - extra} and the "
                "dataset's classes, or use a checkpoint trained for these classes"
            )
            break
    return advice


def fit_problems(
    model: nn.Module,
    state: Dict[str, torch.Tensor],
    source: str,
    inference: bool = True,
    cfg_hint: str = 'model.backbone.',
) -> Optional[str]:
    """Why ``state`` does not fit ``model`` (None if it does): the counts and a few names of the
    missing, unexpected and mismatched keys, and what would fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not _allowed(k, 'model', inference)]
    unexpected = [k for k in state if k not in own and not _allowed(k, 'checkpoint', inference)]
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    if not (missing or unexpected or mismatched):
        return None
    parts = []
    if missing:
        parts.append(f'{len(missing)} model tensors are not in it (e.g. {", ".join(missing[:3])})')
    if unexpected:
        parts.append(
            f'{len(unexpected)} of its tensors are not in the model (e.g. '
            f'{", ".join(unexpected[:3])})'
        )
    if mismatched:
        shown = [
            f'{k}: {tuple(state[k].shape)} in it, {tuple(own[k].shape)} in the model'
            for k in mismatched[:3]
        ]
        parts.append(f'{len(mismatched)} have another shape (e.g. {"; ".join(shown)})')
    message = f"{source} does not fit the config's model: " + '; '.join(parts) + '.'
    advice = _advice(own, state, mismatched, cfg_hint)
    if advice:
        message += ' What would fit: ' + '; '.join(advice) + '.'
    return message


def nest_flat_deploy_kernels(state: Dict[str, torch.Tensor], own_keys) -> Dict[str, torch.Tensor]:
    """``state`` with the authors' deploy=True block kernels (``...dwconv.weight`` / ``.bias``)
    renamed to where this model keeps them (``...dwconv.lk_origin.*``), for loaders that match
    keys before ``load_state_dict``'s hooks run; other keys as they are."""
    renamed = {}
    for key, value in state.items():
        head, _, name = key.rpartition('.')
        nested = f'{head}.lk_origin.{name}'
        if head.endswith('dwconv') and key not in own_keys and nested in own_keys:
            key = nested
        renamed[key] = value
    return renamed


def follow_checkpoint_structure(cfg, ckpt: dict, source: str) -> None:
    """Build a UniRepLKNet model of ``cfg`` in the checkpoint's structure: a re-parameterized
    (deploy) checkpoint sets ``model.backbone.deploy=True``, and says so."""
    backbone = cfg.model.get('backbone')
    if backbone is None or 'UniRepLKNet' not in str(backbone.get('type', '')):
        return
    keys = [k for k in model_state_dict(ckpt, source) if k.startswith('backbone.')]
    if backbone_structure(keys)[0] == 'deploy' and not backbone.get('deploy', False):
        backbone['deploy'] = True
        print_log(
            f'{source} is re-parameterized: using it with model.backbone.deploy=True',
            logger='current',
        )


def load_model_weights(
    model: nn.Module,
    checkpoint,
    source: Optional[str] = None,
    inference: bool = True,
    partial: bool = False,
    cfg_hint: str = 'model.backbone.',
    partial_flag: Optional[str] = None,
) -> dict:
    """Load a checkpoint (a file, a URL, or one read already) into a whole detector or segmentor;
    returns the checkpoint.

    Every model tensor must come from the checkpoint and every checkpoint tensor must land with
    its shape, but for :data:`ALLOWED_DIFFERENCES`; the weights must be finite. ``partial``: load
    the tensors that fit and leave the others as they are (a deliberate partial load, logged).
    ``partial_flag`` names the option that asks for it, for the error message.
    """
    if isinstance(checkpoint, dict):
        ckpt, source = checkpoint, source or 'the checkpoint'
    else:
        ckpt, source = read_checkpoint(checkpoint), source or str(checkpoint)
    own = model.state_dict()
    state = nest_flat_deploy_kernels(model_state_dict(ckpt, source), own)
    check_finite(state, source)
    problems = fit_problems(model, state, source, inference, cfg_hint)
    if problems and not partial:
        if partial_flag:
            problems += f' To load only the tensors that fit on purpose, pass {partial_flag}.'
        raise CheckpointError(problems)
    fitting = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    if problems:
        print_log(f'partial load as asked: {problems}', logger='current', level=30)
    model.load_state_dict(fitting, strict=False)
    print_log(
        f"loaded {len(fitting)} of the model's {len(own)} tensors from {source}", logger='current'
    )
    return ckpt
