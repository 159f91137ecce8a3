"""Layer-wise learning-rate decay for UniRepLKNet detectors and segmentors.

MMDetection's ``LearningRateDecayOptimizerConstructor`` recognizes only ConvNeXt (by class name),
and MMSegmentation's only ConvNeXt / BEiT / MAE, so we ask the backbone itself: its
``get_layer_depth(name, prefix, num_layers)`` gives each parameter's layer id by the authors' rule.
"""

from typing import List

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper

from mmunirep.registry import OPTIM_WRAPPER_CONSTRUCTORS, register_module


@register_module(OPTIM_WRAPPER_CONSTRUCTORS)
class UniRepLKNetLayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``paramwise_cfg``: ``num_layers`` (default 12), ``decay_rate`` (default 0.8) and optional
    ``dw_scale`` (extra lr factor for depthwise-conv parameters, default 1.0).

    A parameter with layer id ``i`` gets ``lr * decay_rate ** (num_layers + 1 - i)``; parameters
    outside the backbone get the base lr. 1-D parameters and biases get no weight decay, all
    others the base weight decay (the authors' rule).
    """

    def __call__(self, model: nn.Module) -> OptimWrapper:
        optim_wrapper = super().__call__(model)
        # mmengine's registry builds the optimizer from a ConfigDict (a config file's), which
        # turns the group dicts given to it into ConfigDicts. torch.compile of a step that
        # includes optimizer.step() (mmengine's `compile=True` compiles train_step) then fails in
        # Dynamo (torch 2.14: "'UserDefinedDictVariable' object has no attribute 'items'").
        # Plain dicts, as torch.optim makes them, compile.
        optimizer = optim_wrapper.optimizer
        optimizer.param_groups = [dict(group) for group in optimizer.param_groups]
        return optim_wrapper

    def add_params(self, params: List[dict], module: nn.Module, **kwargs) -> None:
        cfg = dict(self.paramwise_cfg)
        num_layers = cfg.pop('num_layers', 12)
        decay_rate = cfg.pop('decay_rate', 0.8)
        dw_scale = cfg.pop('dw_scale', 1.0)
        if cfg:
            raise ValueError(
                f'{type(self).__name__} paramwise_cfg accepts num_layers, decay_rate '
                f'and dw_scale; got also {sorted(cfg)}'
            )
        backbone = getattr(module, 'backbone', None)
        if backbone is None or not hasattr(backbone, 'get_layer_depth'):
            raise TypeError(
                f'{type(self).__name__} needs a model whose .backbone has '
                f'get_layer_depth() (e.g. UniRepLKNet); got '
                f'{type(backbone).__name__ if backbone is not None else "no backbone"}'
            )
        groups = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            if param.ndim == 1 or name.endswith('.bias'):
                decay_name, weight_decay = 'no_decay', 0.0
            else:
                decay_name, weight_decay = 'decay', self.base_wd
            layer_id, total = backbone.get_layer_depth(
                name, prefix='backbone.', num_layers=num_layers
            )
            scale = decay_rate ** (total - layer_id - 1)
            is_dw = '.dwconv.' in name and name.startswith('backbone.')
            if is_dw:
                scale *= dw_scale
            key = f'layer_{layer_id}_{decay_name}' + ('_dw' if is_dw and dw_scale != 1.0 else '')
            if key not in groups:
                groups[key] = dict(
                    params=[],
                    param_names=[],
                    weight_decay=weight_decay,
                    lr=self.base_lr * scale,
                    lr_scale=scale,
                )
            groups[key]['params'].append(param)
            groups[key]['param_names'].append(name)
        summary = ', '.join(
            f'{k}: {len(g["params"])} params x{g["lr_scale"]:.4g}'
            for k, g in sorted(groups.items())
        )
        print_log(
            f'layer-wise lr decay (rate {decay_rate}, {num_layers} layers): {summary}',
            logger='current',
            level=10,
        )
        for g in groups.values():
            del g['param_names'], g['lr_scale']
        params.extend(groups.values())
