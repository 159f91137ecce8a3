"""Building a detector / segmentor from a config and loading a checkpoint into it, for the tools."""
import copy
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner.checkpoint import CheckpointLoader

from .config_utils import framework_of


def build_model(cfg: Config, deploy: Optional[bool] = None) -> nn.Module:
    """Build ``cfg.model`` in its framework's scope, without fetching the backbone's pretrained
    weights (a checkpoint loaded next provides them). ``deploy`` overrides the backbone's flag.
    The backbone is eager even if the config compiles it (``compile=True``): the tools that build
    models this way trace, count, export or time them (benchmark.py --compile compiles its own)."""
    cfg = copy.deepcopy(cfg)
    init_default_scope(framework_of(cfg))
    backbone = cfg.model.get('backbone')
    if backbone is not None:
        backbone['init_cfg'] = None
        if deploy is not None:
            backbone['deploy'] = deploy
        if backbone.get('compile'):
            backbone['compile'] = False
    if cfg.model.get('pretrained') is not None:
        cfg.model['pretrained'] = None
    return MODELS.build(cfg.model)


def read_state_dict(checkpoint: str) -> Tuple[Dict[str, torch.Tensor], dict]:
    """The model state dict and the rest of a checkpoint (loaded with torch's weights_only
    default through mmengine's loader)."""
    ckpt = CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu')
    if not isinstance(ckpt, dict):
        raise TypeError(f'{checkpoint}: expected a dict checkpoint, got {type(ckpt).__name__}')
    state = ckpt.get('state_dict', ckpt.get('model', ckpt))
    state = {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in state.items()}
    return state, ckpt


def load_exactly(model: nn.Module, state: Dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` so that every model key is filled and every checkpoint key is used."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise RuntimeError(
            f'{source} does not fit the config\'s model: {len(missing)} model keys missing from '
            f'the checkpoint (e.g. {missing[:4]}), {len(unexpected)} checkpoint keys the model '
            f'lacks (e.g. {unexpected[:4]}). Is it the checkpoint of another config or variant, '
            'or of the other structure (add/remove --cfg-options model.backbone.deploy=True)?')
    model.load_state_dict(state, strict=True)
    print_log(f'loaded all {len(own)} tensors from {source}', logger='current')
