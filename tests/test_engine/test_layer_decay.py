"""The layer-wise lr-decay optimizer wrapper constructor against the authors' rule."""

import pytest
import torch
import torch.nn as nn
from mmengine.config import ConfigDict
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

import mmunirep  # noqa: F401
from mmunirep.models import UniRepLKNet


class Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = UniRepLKNet(arch='a', frozen_stages=-1)
        self.neck = nn.Conv2d(4, 4, 1)


def authors_layer_id(name: str, num_max_layer: int) -> int:
    """The authors' get_num_layer_layer_wise, restated from REFERENCE.md."""
    if name.startswith('backbone.downsample_layers'):
        return (0, 2, 3, num_max_layer)[int(name.split('.')[2])]
    if name.startswith('backbone.stages'):
        stage, block = int(name.split('.')[2]), int(name.split('.')[3])
        return (1, 2, 3 + block // 3, num_max_layer)[stage]
    return num_max_layer + 1


@pytest.mark.parametrize(
    'decay_rate, num_layers, given',
    [(0.8, 12, True), (0.7, 12, True), (0.9, 6, True), (0.8, 12, False)],
    ids=['0.8-12', '0.7-12', '0.9-6', 'defaults-without-paramwise_cfg'],
)
def test_groups_follow_the_authors_rule(decay_rate, num_layers, given):
    model = Detector()
    base_lr, base_wd = 1e-4, 0.05
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(
        dict(
            type='UniRepLKNetLayerDecayOptimWrapperConstructor',
            optim_wrapper_cfg=dict(
                type='OptimWrapper', optimizer=dict(type='AdamW', lr=base_lr, weight_decay=base_wd)
            ),
            **(
                {'paramwise_cfg': dict(num_layers=num_layers, decay_rate=decay_rate)}
                if given
                else {}
            ),
        )
    )
    optim = constructor(model).optimizer
    by_param = {}
    for group in optim.param_groups:
        for p in group['params']:
            assert id(p) not in by_param, 'a parameter in two groups'
            by_param[id(p)] = group
    names = dict(model.named_parameters())
    assert len(by_param) == len(names)
    seen_ids = set()
    for name, p in names.items():
        group = by_param[id(p)]
        layer_id = authors_layer_id(name, num_layers)
        seen_ids.add(layer_id)
        expected_lr = base_lr * decay_rate ** (num_layers + 1 - layer_id)
        assert group['lr'] == pytest.approx(expected_lr, rel=1e-12), name
        expected_wd = 0.0 if (p.ndim == 1 or name.endswith('.bias')) else base_wd
        assert group['weight_decay'] == expected_wd, name
    assert by_param[id(model.neck.weight)]['lr'] == pytest.approx(base_lr)  # heads: base lr
    assert by_param[id(model.backbone.norm0.weight)]['lr'] == pytest.approx(base_lr)
    assert {0, 1, 2, 3, 4, num_layers, num_layers + 1} <= seen_ids


def test_groups_are_plain_dicts_that_torch_compile_steps():
    """The optimizer's groups are plain dicts, not the ConfigDicts mmengine's registry makes of
    them, so that a compiled step with optimizer.step() (mmengine's compile=True) traces; the
    compiled step updates the parameters as an eager one does."""
    import torch

    def build(model):  # from a ConfigDict, as a config file gives it to the Runner
        return OPTIM_WRAPPER_CONSTRUCTORS.build(
            ConfigDict(
                type='UniRepLKNetLayerDecayOptimWrapperConstructor',
                optim_wrapper_cfg=dict(
                    type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05)
                ),
                paramwise_cfg=dict(num_layers=6, decay_rate=0.8),
            )
        )(model).optimizer

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = UniRepLKNet(
                arch=dict(
                    depths=(1, 1, 1, 1), dims=(4, 8, 8, 8), kernel_sizes=((3,), (3,), (3,), (3,))
                )
            )

    torch.manual_seed(0)
    models = [Tiny(), Tiny()]
    models[1].load_state_dict(models[0].state_dict())
    before = [p.detach().clone() for p in models[0].parameters()]
    x = torch.randn(2, 3, 64, 64)
    for model, compiled in zip(models, (False, True)):
        optimizer = build(model)
        assert all(type(group) is dict for group in optimizer.param_groups)

        def step(optimizer=optimizer, model=model):
            optimizer.zero_grad()
            sum(o.square().mean() for o in model.backbone(x)).backward()
            optimizer.step()

        (torch.compile(step, backend='eager') if compiled else step)()
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)
    changed = sum(not torch.equal(a, b) for a, b in zip(models[0].parameters(), before))
    assert changed > len(before) // 2, (changed, len(before))  # the step did update them


def test_frozen_parameters_are_left_out_and_dw_scale():
    model = Detector()
    model.backbone.frozen_stages = 0
    model.backbone.train()
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(
        dict(
            type='mmunirep.UniRepLKNetLayerDecayOptimWrapperConstructor',
            optim_wrapper_cfg=dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1.0)),
            paramwise_cfg=dict(num_layers=12, decay_rate=0.5, dw_scale=3.0),
        )
    )
    optim = constructor(model).optimizer
    params = {id(p) for g in optim.param_groups for p in g['params']}
    assert id(model.backbone.stages[0][0].pwconv1[1].weight) not in params
    lr = {id(p): g['lr'] for g in optim.param_groups for p in g['params']}
    dw = model.backbone.stages[1][0].dwconv.lk_origin.weight  # stage 1 -> layer 2
    assert lr[id(dw)] == pytest.approx(3.0 * 0.5**11)
    assert lr[id(model.backbone.stages[1][0].pwconv1[1].weight)] == pytest.approx(0.5**11)


def test_bad_configuration():
    with pytest.raises(ValueError, match='decay_rte'):
        OPTIM_WRAPPER_CONSTRUCTORS.build(
            dict(
                type='UniRepLKNetLayerDecayOptimWrapperConstructor',
                optim_wrapper_cfg=dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1.0)),
                paramwise_cfg=dict(decay_rte=0.5),
            )
        )(Detector())
    with pytest.raises(TypeError, match='get_layer_depth'):
        OPTIM_WRAPPER_CONSTRUCTORS.build(
            dict(
                type='UniRepLKNetLayerDecayOptimWrapperConstructor',
                optim_wrapper_cfg=dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1.0)),
                paramwise_cfg=dict(decay_rate=0.5),
            )
        )(nn.Sequential(nn.Linear(2, 2)))


def test_stage2_ids_are_not_capped_like_the_authors():
    """Stage-2 block j of S (27 blocks) gets 3 + j // 3 whatever num_layers is, as in the
    authors' rule: with 9 (T's setting; S IN-22K used it only in a commit the authors replaced)
    the last blocks would rank above the heads, which is why the S configs use 12."""
    model = UniRepLKNet(arch='a')
    assert model.get_layer_depth('backbone.stages.2.26.gamma', num_layers=9) == (11, 11)
    assert model.get_layer_depth('backbone.stages.3.0.gamma', num_layers=9) == (9, 11)


class QueryDetector(nn.Module):
    """A backbone, a normed neck, query / level embeddings, and a head that shares the neck's
    conv (as tied weights do)."""

    def __init__(self):
        super().__init__()
        self.backbone = UniRepLKNet(arch='a')
        self.neck = nn.Sequential(nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4))
        self.query_embed = nn.Embedding(5, 4)
        self.level_embed = nn.Parameter(torch.zeros(3, 4))
        self.head = nn.ModuleDict(dict(fc=nn.Linear(4, 4), shared=self.neck[0]))


def build_optimizer(model, paramwise_cfg, lr=1e-4, weight_decay=0.05):
    return OPTIM_WRAPPER_CONSTRUCTORS.build(
        dict(
            type='UniRepLKNetLayerDecayOptimWrapperConstructor',
            optim_wrapper_cfg=dict(
                type='OptimWrapper', optimizer=dict(type='AdamW', lr=lr, weight_decay=weight_decay)
            ),
            paramwise_cfg=paramwise_cfg,
        )
    )(model).optimizer


def test_mmengine_paramwise_options_combine_with_the_layer_ids():
    """custom_keys / norm_decay_mult / bias_decay_mult / bypass_duplicate: each parameter's lr is
    the layer-decay lr times mmengine's multiplier, its weight decay mmengine's where an option
    sets one and the authors' rule elsewhere; a custom key's other entries land in its group."""
    model = QueryDetector()
    base_lr, base_wd, decay, num_layers = 1e-4, 0.05, 0.8, 12
    embed = dict(lr_mult=1.0, decay_mult=0.0)
    paramwise_cfg = dict(
        num_layers=num_layers,
        decay_rate=decay,
        custom_keys={
            'backbone': dict(lr_mult=0.1),
            'backbone.stages.3': dict(lr_mult=0.5, decay_mult=2.0),
            'query_embed': embed,
            'level_embed': dict(embed, betas=(0.8, 0.9)),
        },
        norm_decay_mult=0.5,
        bias_decay_mult=0.25,
        bypass_duplicate=True,
    )
    optim = build_optimizer(model, paramwise_cfg, base_lr, base_wd)
    group_of = {}
    for group in optim.param_groups:
        assert type(group) is dict
        for p in group['params']:
            assert id(p) not in group_of, 'a parameter in two groups'
            group_of[id(p)] = group
    names = dict(model.named_parameters())  # the shared conv once (bypass_duplicate)
    assert len(group_of) == len(names)
    for name, p in names.items():
        group = group_of[id(p)]
        layer_scale = decay ** (num_layers + 1 - authors_layer_id(name, num_layers))
        if name.startswith('backbone.stages.3.'):
            lr_mult, wd = 0.5, 2.0 * base_wd  # the longest matching key wins, as in mmengine
        elif name.startswith('backbone.'):
            # 'backbone' matches: its decay_mult (default 1) replaces the authors' rule
            lr_mult, wd = 0.1, base_wd
        elif name in ('query_embed.weight', 'level_embed'):
            lr_mult, wd = 1.0, 0.0
        elif name.startswith('neck.1.'):
            lr_mult, wd = 1.0, 0.5 * base_wd  # norm_decay_mult
        elif name.endswith('.bias'):
            lr_mult, wd = 1.0, 0.25 * base_wd  # bias_decay_mult
        else:
            lr_mult, wd = 1.0, base_wd
        assert group['lr'] == pytest.approx(base_lr * layer_scale * lr_mult, rel=1e-12), name
        assert group['weight_decay'] == pytest.approx(wd, rel=1e-12), name
    assert group_of[id(model.level_embed)]['betas'] == (0.8, 0.9)
    assert group_of[id(model.query_embed.weight)]['betas'] == (0.9, 0.999)  # AdamW's default
    # the heads' base lr, the stem's fully decayed one
    assert group_of[id(model.head.fc.weight)]['lr'] == pytest.approx(base_lr)
    stem = model.backbone.downsample_layers[0][0].weight
    assert group_of[id(stem)]['lr'] == pytest.approx(base_lr * 0.1 * decay**13)
    # groups are merged: far fewer groups than parameters
    assert len(optim.param_groups) < len(names) // 4


def test_without_mmengine_options_the_authors_weight_decay_rule_holds_everywhere():
    """1-D parameters and biases without weight decay, in the heads too (the norms; the 2-D
    embeddings keep it), and a tied parameter once, under its first name, with or without
    bypass_duplicate (as named_parameters() lists it)."""
    model = QueryDetector()
    for bypass in (False, True):
        optim = build_optimizer(model, dict(num_layers=12, decay_rate=0.8, bypass_duplicate=bypass))
        params = [id(p) for g in optim.param_groups for p in g['params']]
        assert sorted(params) == sorted(id(p) for p in model.parameters())
    wd = {id(p): g['weight_decay'] for g in optim.param_groups for p in g['params']}
    assert wd[id(model.neck[1].weight)] == wd[id(model.head.fc.bias)] == 0.0
    assert wd[id(model.level_embed)] == wd[id(model.query_embed.weight)] == 0.05
    assert wd[id(model.neck[0].weight)] == 0.05
