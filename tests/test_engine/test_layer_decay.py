"""The layer-wise lr-decay optimizer wrapper constructor against the authors' rule."""

import pytest
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


@pytest.mark.parametrize('decay_rate, num_layers', [(0.8, 12), (0.7, 12), (0.9, 6)])
def test_groups_follow_the_authors_rule(decay_rate, num_layers):
    model = Detector()
    base_lr, base_wd = 1e-4, 0.05
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(
        dict(
            type='UniRepLKNetLayerDecayOptimWrapperConstructor',
            optim_wrapper_cfg=dict(
                type='OptimWrapper', optimizer=dict(type='AdamW', lr=base_lr, weight_decay=base_wd)
            ),
            paramwise_cfg=dict(num_layers=num_layers, decay_rate=decay_rate),
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
