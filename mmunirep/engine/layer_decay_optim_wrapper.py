"""Layer-wise learning-rate decay for UniRepLKNet detectors and segmentors.

MMDetection's ``LearningRateDecayOptimizerConstructor`` recognizes only ConvNeXt (by class name),
and MMSegmentation's only ConvNeXt / BEiT / MAE, so we ask the backbone itself: its
``get_layer_depth(name, prefix, num_layers)`` gives each parameter's layer id by the authors' rule.
"""

from typing import List, Optional

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper

from mmunirep.registry import OPTIM_WRAPPER_CONSTRUCTORS, register_module

# mmengine's DefaultOptimWrapperConstructor options, honoured alongside the layer ids
MMENGINE_OPTIONS = (
    'custom_keys',
    'bias_lr_mult',
    'bias_decay_mult',
    'norm_decay_mult',
    'dwconv_decay_mult',
    'flat_decay_mult',
    'dcn_offset_lr_mult',
    'bypass_duplicate',
)
LAYER_DECAY_OPTIONS = ('num_layers', 'decay_rate', 'dw_scale')


@register_module(OPTIM_WRAPPER_CONSTRUCTORS)
class UniRepLKNetLayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``paramwise_cfg``: ``num_layers`` (default 12), ``decay_rate`` (default 0.8) and optional
    ``dw_scale`` (extra lr factor for depthwise-conv parameters, default 1.0), plus any of
    mmengine's paramwise options (``custom_keys``, ``bias_lr_mult``, ``bias_decay_mult``,
    ``norm_decay_mult``, ``dwconv_decay_mult``, ``flat_decay_mult``, ``dcn_offset_lr_mult``,
    ``bypass_duplicate``).

    A parameter with layer id ``i`` gets ``lr * decay_rate ** (num_layers + 1 - i)``; parameters
    outside the backbone get the base lr. 1-D parameters and biases get no weight decay, all
    others the base weight decay (the authors' rule: GRN's ``gamma`` and ``beta``, stored as
    ``(1, 1, 1, C)``, are decayed, which ConvNeXt V2's own recipe does not do). Without a
    ``paramwise_cfg`` the defaults apply.

    mmengine's options act as in ``DefaultOptimWrapperConstructor`` and combine with the layer
    ids: the lr multiplier they give (a custom key's ``lr_mult``, ``bias_lr_mult``,
    ``dcn_offset_lr_mult``) multiplies the layer-decay scale; where one of them sets a weight
    decay (a matching custom key: ``base_wd * decay_mult``, its ``decay_mult`` defaulting to 1 as
    in mmengine; or the norm / bias / depthwise / flat decay multipliers), that replaces the
    authors' rule for the parameter. Any other entry of a matching custom key is copied into the
    parameter's group, as mmengine does. A parameter that two modules share is placed once
    (``bypass_duplicate`` is implied). So ``custom_keys={'query_embed': dict(decay_mult=0.0)}``
    takes the weight decay off the queries, and ``custom_keys={'backbone': dict(lr_mult=0.1)}``
    scales every backbone layer's decayed lr by 0.1.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None):
        # mmengine's constructor builds parameter groups (add_params) only for a non-empty
        # paramwise_cfg: without one, the layer decay's defaults are given explicitly
        super().__init__(optim_wrapper_cfg, paramwise_cfg or dict(num_layers=12, decay_rate=0.8))

    def __call__(self, model: nn.Module) -> OptimWrapper:
        optim_wrapper = super().__call__(model)
        # mmengine's registry builds the optimizer from a ConfigDict (a config file's), which
        # turns the group dicts given to it into ConfigDicts. torch.compile of a step that
        # includes optimizer.step() (mmengine's `compile=True` compiles train_step) then fails in
        # Dynamo on such groups; plain dicts, as torch.optim makes them, compile.
        optimizer = optim_wrapper.optimizer
        optimizer.param_groups = [dict(group) for group in optimizer.param_groups]
        return optim_wrapper

    def add_params(self, params: List[dict], module: nn.Module, **kwargs) -> None:
        cfg = dict(self.paramwise_cfg)
        num_layers = cfg.pop('num_layers', 12)
        decay_rate = cfg.pop('decay_rate', 0.8)
        dw_scale = cfg.pop('dw_scale', 1.0)
        unknown = sorted(set(cfg) - set(MMENGINE_OPTIONS))
        if unknown:
            raise ValueError(
                f'{type(self).__name__} paramwise_cfg accepts {", ".join(LAYER_DECAY_OPTIONS)} '
                f"and mmengine's {', '.join(MMENGINE_OPTIONS)}; got also {unknown}"
            )
        backbone = getattr(module, 'backbone', None)
        if backbone is None or not hasattr(backbone, 'get_layer_depth'):
            raise TypeError(
                f'{type(self).__name__} needs a model whose .backbone has '
                f'get_layer_depth() (e.g. UniRepLKNet); got '
                f'{type(backbone).__name__ if backbone is not None else "no backbone"}'
            )

        # Why the combination is written here: mmengine's constructor knows the paramwise
        # options but no layer ids, and MMDetection's / MMSegmentation's layer-decay constructors
        # know layer ids (of other backbones) but drop every paramwise option. The DETR-style and
        # Mask2Former recipes need both (no weight decay on query and level embeddings, norms).
        # mmengine's own add_params first gives each parameter its group by those options (one
        # group per parameter, with 'lr' / 'weight_decay' only where an option set them); the
        # layer-decay scale and the authors' weight-decay rule are then applied on top of it.
        mmengine_groups: List[dict] = []
        DefaultOptimWrapperConstructor(
            dict(type='OptimWrapper', optimizer=self.optimizer_cfg), cfg
        ).add_params(mmengine_groups, module)
        names = {}
        for name, param in module.named_parameters(remove_duplicate=False):
            names.setdefault(id(param), name)

        groups, placed = {}, set()
        for mm_group in mm_groups_with_names(mmengine_groups, names):
            name, param = mm_group.pop('name'), mm_group.pop('params')[0]
            # a parameter shared by two modules (tied weights) once, as named_parameters() lists
            # it (mmengine's bypass_duplicate; without it torch would refuse the optimizer)
            if id(param) in placed:
                continue
            placed.add(id(param))
            lr_mult = mm_group.pop('lr', self.base_lr) / self.base_lr if self.base_lr else 1.0
            if 'weight_decay' in mm_group:  # set by an mmengine option
                weight_decay = mm_group.pop('weight_decay')
                decay_name = f'wd{weight_decay:g}'
            elif param.ndim == 1 or name.endswith('.bias'):
                decay_name, weight_decay = 'no_decay', 0.0
            else:
                decay_name, weight_decay = 'decay', self.base_wd
            layer_id, total = backbone.get_layer_depth(
                name, prefix='backbone.', num_layers=num_layers
            )
            scale = decay_rate ** (total - layer_id - 1) * lr_mult
            is_dw = '.dwconv.' in name and name.startswith('backbone.')
            if is_dw:
                scale *= dw_scale
            key = (
                f'layer_{layer_id}_{decay_name}'
                + ('_dw' if is_dw and dw_scale != 1.0 else '')
                + (f'_x{lr_mult:g}' if lr_mult != 1.0 else '')
                + ''.join(f'_{k}={v}' for k, v in sorted(mm_group.items()))
            )
            if key not in groups:
                group = dict(params=[], param_names=[], lr_scale=scale)
                group.update(mm_group)  # a custom key's other entries, as mmengine copies them
                group.update(weight_decay=weight_decay, lr=self.base_lr * scale)
                groups[key] = group
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


def mm_groups_with_names(mmengine_groups: List[dict], names: dict):
    """mmengine's one-parameter groups, each with its parameter's name under 'name'."""
    for group in mmengine_groups:
        (param,) = group['params']
        yield dict(group, name=names[id(param)])
