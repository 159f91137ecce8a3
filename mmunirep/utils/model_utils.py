"""Building a detector / segmentor from a config for the tools."""

import copy
from typing import Optional

import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

from .config_utils import clear_pretrained, framework_of


def build_model(cfg: Config, deploy: Optional[bool] = None) -> nn.Module:
    """Build ``cfg.model`` in its framework's scope, without fetching the backbone's pretrained
    weights (a checkpoint loaded next provides them). ``deploy`` overrides the backbone's flag.
    The backbone is eager even if the config compiles it (``compile=True``): the tools that build
    models this way trace, count, export or time them (benchmark.py --compile compiles its own)."""
    cfg = copy.deepcopy(cfg)
    init_default_scope(framework_of(cfg))
    clear_pretrained(cfg)
    backbone = cfg.model.get('backbone')
    if backbone is not None:
        if deploy is not None:
            backbone['deploy'] = deploy
        if backbone.get('compile'):
            backbone['compile'] = False
    return MODELS.build(cfg.model)
