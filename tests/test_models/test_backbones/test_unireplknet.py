"""UniRepLKNet: shapes, freezing, checkpointing, re-parameterization, checkpoints, figures."""

import copy
import re
from unittest import mock

import pytest
import torch
import torch.nn as nn
from timm.layers import LayerNorm2d

from mmunirep.models import UniRepLKNet, reparameterize_unireplknet
from mmunirep.models.backbones.unireplknet import (
    ARCH_SETTINGS,
    GRN,
    ChannelsFirstLayerNorm,
    SEBlock,
    UniRepLKNetBlock,
    pooled_l2_norm,
    scaled_linear,
    spatial_l2_norm,
)
from mmunirep.ops import onednn_linear

from helpers import randomize, recording_backend, rel_err

SMALL_ARCHS = ['a', 'f', 'p', 'n', 't', 's']
# the large variants take seconds each to build on a CPU
ALL_ARCHS = SMALL_ARCHS + [pytest.param(a, marks=pytest.mark.slow) for a in ('b', 'l', 'xl')]
STRIDES = (4, 8, 16, 32)
# a small network with both kinds of block (a 3x3 depthwise conv and a Dilated Reparam Block)
TINY_ARCH = dict(
    depths=(1, 1, 2, 1), dims=(16, 24, 32, 40), kernel_sizes=((3,), (13,), (13, 3), (13,))
)


@pytest.mark.parametrize('arch', SMALL_ARCHS)
def test_output_shapes_every_small_variant(arch):
    model = UniRepLKNet(arch=arch).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        outs = model(x)
    dims = ARCH_SETTINGS[arch]['dims']
    assert len(outs) == 4
    for out, dim, s in zip(outs, dims, STRIDES):
        assert out.shape == (2, dim, 64 // s, 96 // s)


@pytest.mark.parametrize('out_indices', [(0,), (1, 3), (2,), (-1,), (0, 1, 2, 3)])
def test_out_indices(out_indices):
    model = UniRepLKNet(arch='a', out_indices=out_indices).eval()
    wanted = sorted(i % 4 for i in out_indices)
    for i in range(4):
        assert hasattr(model, f'norm{i}') == (i in wanted)
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [ARCH_SETTINGS['a']['dims'][i] for i in wanted]
    assert [64 // o.shape[-1] for o in outs] == [STRIDES[i] for i in wanted]


@pytest.mark.parametrize('out_indices', [(0,), (0, 2), (1,)])
def test_stages_after_the_last_output_are_skipped_and_frozen(out_indices):
    """What DDP needs (every trainable parameter gets a gradient) and what checkpoints need (the
    skipped stages stay in the state dict); the outputs are those of the full network, in eval
    and in training mode. Random BN statistics, GRN parameters and layer scales make every
    block's residual branch count (a fresh model's 1e-6 layer scales would hide a wrong or
    unloaded block below the tolerance)."""
    torch.manual_seed(0)
    full = UniRepLKNet(arch='a')
    full.init_weights()
    randomize(full)
    part = UniRepLKNet(arch='a', out_indices=out_indices)
    part.load_state_dict(full.state_dict(), strict=False)
    assert set(full.state_dict()) - set(part.state_dict()) == {
        k for k in full.state_dict() if re.match(rf'norm[^{"".join(map(str, out_indices))}]\.', k)
    }
    last = max(out_indices)
    x = torch.randn(2, 3, 64, 64)
    # eval first: a training forward updates the BN statistics
    full.eval()
    part.eval()
    with torch.no_grad():
        ref = full(x)
        got = part(x)
    assert len(got) == len(out_indices)
    for o, i in zip(got, out_indices):
        torch.testing.assert_close(o, ref[i], rtol=1e-5, atol=1e-6)
    ran = []
    for i, stage in enumerate(part.stages):
        stage.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
    full.train()
    part.train()
    for i in range(4):
        skipped = i > last
        for module in (part.downsample_layers[i], part.stages[i]):
            assert all(p.requires_grad != skipped for p in module.parameters()), i
            assert all(m.training != skipped for m in module.modules()), i
    outs = part(x)
    assert ran == list(range(last + 1))
    ref = full(x)  # batch statistics and the gradient path, as the part's
    for o, i in zip(outs, out_indices):
        torch.testing.assert_close(o.detach(), ref[i].detach(), rtol=1e-5, atol=1e-6)
    sum((o * o).mean() for o in outs).backward()
    no_grad = [n for n, p in part.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f'trainable parameters without a gradient (DDP would fail): {no_grad}'


def test_odd_input_sizes():
    model = UniRepLKNet(arch='a').eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 50, 77))
    # every down-sampling conv is 3x3, stride 2, padding 1: ceil division at each step
    sizes = [(50, 77)]
    for _ in range(5):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    assert [tuple(o.shape[-2:]) for o in outs] == sizes[2:]


@pytest.mark.parametrize('frozen_stages', [-1, 0, 1, 3])
def test_frozen_stages(frozen_stages):
    model = UniRepLKNet(arch='a', frozen_stages=frozen_stages)
    model.train()
    for i in range(4):
        frozen = i <= frozen_stages
        for part in (model.downsample_layers[i], model.stages[i], getattr(model, f'norm{i}')):
            assert all(p.requires_grad != frozen for p in part.parameters())
            assert all(m.training != frozen for m in part.modules())
    # frozen weights really do not change in a training step
    trainable = [p for p in model.parameters() if p.requires_grad]
    if frozen_stages == 3:
        assert not trainable
        return
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(trainable, lr=0.1)
    sum(o.mean() for o in model(torch.randn(2, 3, 32, 32))).backward()
    opt.step()
    after = model.state_dict()
    changed = set()
    for k, v in before.items():
        m = re.match(r'(downsample_layers|stages)\.(\d)\.|norm(\d)\.', k)
        stage = int(m.group(2) or m.group(3))
        if stage <= frozen_stages:
            assert torch.equal(v, after[k]), k
        elif not torch.equal(v, after[k]):
            changed.add(stage)
    # and the step did update every stage that is not frozen
    assert changed == set(range(frozen_stages + 1, 4)), changed


def test_norm_eval():
    model = UniRepLKNet(arch='a', norm_eval=True).train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    assert model.stages[2][0].se.training  # everything else trains
    model = UniRepLKNet(arch='a', norm_eval=False).train()
    assert all(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def assert_same_training_step(ref: UniRepLKNet, other: UniRepLKNet, x: torch.Tensor) -> None:
    """One training-mode forward and backward of both models (loaded with the same weights):
    the same outputs, parameter gradients and BatchNorm running statistics (one update)."""
    other.load_state_dict(ref.state_dict())
    ref.train()
    other.train()
    outs_ref, outs_other = ref(x), other(x)
    assert len(outs_ref) == len(outs_other) > 0
    for a, b in zip(outs_ref, outs_other):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    sum((o * o).mean() for o in outs_ref).backward()
    sum((o * o).mean() for o in outs_other).backward()
    for (name, p_ref), p_other in zip(ref.named_parameters(), other.parameters()):
        assert p_ref.grad is not None, name
        torch.testing.assert_close(p_other.grad, p_ref.grad, rtol=1e-4, atol=1e-6, msg=name)
    buffers, ref_buffers = dict(other.named_buffers()), dict(ref.named_buffers())
    bn_buffers = [
        n for n in ref_buffers if n.endswith(('running_mean', 'running_var', 'num_batches_tracked'))
    ]
    assert len(bn_buffers) > 3 * sum(ref.depths)
    for name in bn_buffers:
        torch.testing.assert_close(buffers[name], ref_buffers[name], rtol=1e-5, atol=1e-7, msg=name)
    assert int(buffers['stages.0.0.norm.num_batches_tracked']) == 1


def test_with_cp_same_outputs_and_gradients():
    """Checkpointing changes nothing but memory: the same outputs and gradients, and the
    recomputation in the backward pass leaves the BatchNorms' running statistics alone (torch's
    checkpoint alone updates them a second time)."""
    torch.manual_seed(0)
    ref = UniRepLKNet(arch='a', with_cp=False)
    ref.init_weights()
    randomize(ref)
    assert_same_training_step(ref, UniRepLKNet(arch='a', with_cp=True), torch.randn(2, 3, 64, 64))


@pytest.mark.slow
@pytest.mark.parametrize('with_cp', [False, True])
def test_compile_option_same_outputs_gradients_and_state(with_cp):
    """compile=dict(...): the forward runs through torch.compile (the backend sees the convs of
    every stage), with eager's outputs and gradients; the state dict is the eager module's, a
    deepcopy (mmengine's EMA) runs, and re-parameterization still works."""
    import copy

    torch._dynamo.reset()
    backend, graphs = recording_backend()
    torch.manual_seed(0)
    ref = UniRepLKNet(arch=TINY_ARCH, with_cp=with_cp)
    ref.init_weights()
    randomize(ref)
    comp = UniRepLKNet(arch=TINY_ARCH, with_cp=with_cp, compile=dict(backend=backend))
    assert comp.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(2, 3, 64, 64)
    assert_same_training_step(ref, comp, x)
    convs = sum(
        n.target == torch.ops.aten.convolution.default for g in graphs for n in g.graph.nodes
    )
    # the stem's 2, 3 down-samplings and every block's large-kernel branches
    assert convs >= 5 + sum(ref.depths), convs
    n_graphs = len(graphs)
    copy.deepcopy(comp)(x)
    comp.eval()
    comp.switch_to_deploy()
    ref.eval()
    ref.switch_to_deploy()
    with torch.no_grad():
        outs_ref, outs_comp = ref(x), comp(x)
        assert len(outs_ref) == len(outs_comp) > 0
        for a, b in zip(outs_ref, outs_comp):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert len(graphs) > n_graphs  # the deploy structure was compiled too


@pytest.mark.parametrize(
    'value, error, message',
    [
        (
            'yes',
            TypeError,
            "compile must be a bool or a dict of torch.compile arguments, got 'yes'",
        ),
        (dict(mod='max-autotune'), ValueError, "unknown torch.compile arguments ['mod']"),
    ],
)
def test_compile_option_errors(value, error, message):
    with pytest.raises(error, match=re.escape(message)):
        UniRepLKNet(arch='a', compile=value)


def test_tools_build_the_backbone_eager():
    """build_model (get_flops, export_onnx, benchmark, ...) ignores a config's compile=True."""
    from mmengine.config import Config

    from mmunirep.utils import build_model

    cfg = Config.fromfile('configs/segmentation/quickstart_unireplknet_a_shapes.py')
    cfg.model.backbone.compile = True
    assert build_model(cfg).backbone.compile_kwargs is None


@pytest.mark.parametrize('arch', ALL_ARCHS)
def test_reparameterization_every_variant(arch):
    """Outputs agree to 1e-5 relative (fp32) and the deploy state dict loads strictly."""
    torch.manual_seed(1)
    size = 64 if arch in SMALL_ARCHS else 32
    model = UniRepLKNet(arch=arch)
    if arch in SMALL_ARCHS:  # (torch's default init is random too; trunc_normal_ is slow on XL)
        model.init_weights()
    randomize(model).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        before = model(x)
    model.switch_to_deploy()
    assert model.deploy
    convs = [
        m for layer in model.downsample_layers for m in layer.modules() if type(m) is nn.Conv2d
    ]
    assert len(convs) == 5  # the stem's two, the three down-sampling layers'
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    keys = set(model.state_dict())
    assert not any(
        'origin_bn' in k
        or 'dil_conv' in k
        or '.beta' in k
        or re.search(r'stages\.\d+\.\d+\.gamma$', k)
        or 'pwconv2.2' in k
        for k in keys
    )
    with torch.no_grad():
        after = model(x)
    assert len(after) == len(before) > 0
    for a, b in zip(after, before):
        assert rel_err(a, b) < 1e-5
    with torch.device('meta'):  # its weights come from the state dict: no init needed
        deploy = UniRepLKNet(arch=arch, deploy=True).eval()
    assert set(deploy.state_dict()) == keys
    deploy.load_state_dict(model.state_dict(), strict=True, assign=True)
    with torch.no_grad():
        again = deploy(x)
    assert len(again) == len(after) > 0
    for a, b in zip(again, after):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_reparameterize_function_converts_a_backbone_inside_a_model():
    """``reparameterize_unireplknet`` (what export, benchmark and the converter call on whole
    detectors) gives the backbone's own deploy structure, channels-last down-sampling weights
    included, and the same features."""
    torch.manual_seed(3)
    detector = nn.ModuleDict(dict(backbone=randomize(UniRepLKNet(arch=TINY_ARCH)).eval()))
    reference = copy.deepcopy(detector.backbone)
    reference.switch_to_deploy()
    assert reparameterize_unireplknet(detector) is detector
    backbone = detector.backbone
    assert backbone.deploy
    for ours, theirs in zip(backbone.state_dict().items(), reference.state_dict().items()):
        assert ours[0] == theirs[0] and ours[1].stride() == theirs[1].stride()
        torch.testing.assert_close(ours[1], theirs[1], rtol=0, atol=0)
    convs = [m for layer in backbone.downsample_layers for m in layer.modules()
             if type(m) is nn.Conv2d]  # fmt: skip
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)


def test_reparameterize_alias_and_timm():
    from timm.utils.model import reparameterize_model

    torch.manual_seed(2)
    model = randomize(UniRepLKNet(arch='a')).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    via_timm = reparameterize_model(model)  # a converted copy
    assert via_timm.deploy and not model.deploy
    model.reparameterize_unireplknet()
    assert model.deploy
    with torch.no_grad():
        outs = model(x)
        assert len(outs) == len(ref) == 4
        for a, b, c in zip(via_timm(x), outs, ref):
            assert rel_err(a, c) < 1e-5 and rel_err(b, c) < 1e-5
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.switch_to_deploy()  # idempotent: nothing changes
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    with torch.no_grad():
        for a, b in zip(model(x), outs):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_authors_flat_deploy_keys_load(tmp_path):
    """The authors' deploy=True model stores large kernels as dwconv.weight, their
    re-parameterized one as dwconv.lk_origin.weight: both load, through load_state_dict (as
    mmengine's Runner loads), through init_cfg's load_pretrained and in a whole model's checkpoint
    through the tools' load_model_weights, every tensor."""
    from mmunirep.utils import load_model_weights

    model = randomize(UniRepLKNet(arch='a')).eval()
    model.switch_to_deploy()
    state = {re.sub(r'dwconv\.lk_origin\.', 'dwconv.', k): v for k, v in model.state_dict().items()}
    assert any(re.search(r'stages\.1\.0\.dwconv\.weight', k) for k in state)
    path = tmp_path / 'flat.pth'
    torch.save(state, path)
    deploy = UniRepLKNet(arch='a', deploy=True)
    deploy.load_state_dict(state, strict=True)
    pretrained = UniRepLKNet(
        arch='a', deploy=True, init_cfg=dict(type='Pretrained', checkpoint=str(path))
    )
    pretrained.init_weights()
    whole = nn.Module()
    whole.backbone = UniRepLKNet(arch='a', deploy=True)
    load_model_weights(whole, dict(state_dict={f'backbone.{k}': v for k, v in state.items()}))
    for loaded in (deploy, pretrained, whole.backbone):
        for k, v in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), k


def test_layer_scale_disabled_and_bad_kernel():
    model = UniRepLKNet(arch='a', layer_scale_init_value=0)
    assert all(b.gamma is None for s in model.stages for b in s)
    with pytest.raises(ValueError, match='kernel sizes'):
        UniRepLKNet(
            arch=dict(
                depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), kernel_sizes=((3,), (4,), (13,), (13,))
            )
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_reparameterization_on_cuda():
    model = randomize(UniRepLKNet(arch='a')).cuda().eval()
    x = torch.randn(1, 3, 64, 64, device='cuda')
    with torch.no_grad():
        before = model(x)
        model.switch_to_deploy()
        after = model(x)
    assert all(p.is_cuda for p in model.parameters())
    assert len(after) == len(before) > 0
    for a, b in zip(after, before):
        assert rel_err(a, b) < 1e-4  # TF32 may be on for convs


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------
def classification_state_dict(arch: str, seed: int = 3) -> dict:
    """A state dict in the layout of the authors' released ImageNet checkpoints."""
    torch.manual_seed(seed)
    backbone = randomize(UniRepLKNet(arch=arch, out_indices=(3,)), seed=seed)
    state = {k: v for k, v in backbone.state_dict().items() if not k.startswith('norm3.')}
    dim = ARCH_SETTINGS[arch]['dims'][-1]
    state['norm.weight'] = torch.randn(dim)
    state['norm.bias'] = torch.randn(dim)
    state['head.weight'] = torch.randn(1000, dim)
    state['head.bias'] = torch.randn(1000)
    return state


@pytest.mark.parametrize('layout', ['plain', 'model', 'state_dict', 'module.', 'backbone.'])
def test_load_released_checkpoint_layouts(tmp_path, layout):
    state = classification_state_dict('a')
    if layout == 'plain':
        ckpt = state
    elif layout == 'model':
        ckpt = {'model': state, 'epoch': 300}
    elif layout == 'state_dict':
        ckpt = {'state_dict': state, 'meta': {'note': 'x'}}
    elif layout == 'module.':
        ckpt = {'model': {'module.' + k: v for k, v in state.items()}}
    else:  # a detector's full state dict: backbone.* next to neck and heads
        ckpt = {
            'state_dict': {
                **{'backbone.' + k: v for k, v in state.items()},
                'neck.lateral_convs.0.conv.weight': torch.randn(4, 4, 1, 1),
            }
        }
    path = tmp_path / 'ckpt.pth'
    torch.save(ckpt, path)
    model = UniRepLKNet(arch='a', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    own = model.state_dict()
    for k, v in state.items():
        if k.startswith(('head.', 'norm.')):
            continue
        assert torch.equal(own[k], v), k


def test_init_cfg_prefix_picks_one_backbone_of_several(tmp_path):
    """mmengine's Pretrained ``prefix``: a distillation checkpoint holds two backbones; the prefix
    chooses which one loads (without it the keys match nothing)."""
    teacher, student = (
        classification_state_dict('a', seed=5),
        classification_state_dict('a', seed=6),
    )
    ckpt = {
        'state_dict': {
            **{'teacher.backbone.' + k: v for k, v in teacher.items()},
            **{'student.backbone.' + k: v for k, v in student.items()},
        }
    }
    path = tmp_path / 'distill.pth'
    torch.save(ckpt, path)
    for prefix, state in (('teacher.backbone.', teacher), ('student.backbone.', student)):
        model = UniRepLKNet(
            arch='a', init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix=prefix)
        )
        model.init_weights()
        own = model.state_dict()
        compared = [k for k in state if not k.startswith(('head.', 'norm.'))]
        assert compared and all(torch.equal(own[k], state[k]) for k in compared), prefix
    with pytest.raises(RuntimeError, match="no key starts with the init_cfg prefix 'backbone.'"):
        UniRepLKNet(
            arch='a', init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix='backbone.')
        ).init_weights()
    with pytest.raises(RuntimeError, match='matches none of the UniRepLKNet keys'):
        UniRepLKNet(arch='a', init_cfg=dict(type='Pretrained', checkpoint=str(path))).init_weights()


@pytest.mark.parametrize('pretrained_type', ['Pretrained', 'mmengine.Pretrained', 'class'])
def test_init_cfg_list_loads_the_checkpoint_our_way_after_the_other_entries(
    tmp_path, pretrained_type
):
    """``init_cfg=[Pretrained, other initializers]``: the checkpoint goes through load_pretrained
    (the authors' ``model`` layout, ``head.*`` ignored) after the others, which set what the
    checkpoint lacks; a checkpoint matching no key is an error there too, not mmengine's
    warning. The Pretrained entry is recognised in each form mmengine accepts: its name, its
    scoped name, its class."""
    from mmengine.model.weight_init import PretrainedInit

    pretrained_type = PretrainedInit if pretrained_type == 'class' else pretrained_type
    state = classification_state_dict('a', seed=11)
    state.pop('downsample_layers.0.0.bias')  # left to the Constant initializer below
    path = tmp_path / 'released.pth'
    torch.save({'model': state}, path)
    init_cfg = [
        dict(type='Constant', layer='Conv2d', val=0.25, bias=0.5),
        dict(type=pretrained_type, checkpoint=str(path)),
    ]
    model = UniRepLKNet(arch='a', init_cfg=init_cfg)
    model.init_weights()
    own = model.state_dict()
    compared = [k for k in state if not k.startswith(('head.', 'norm.'))]
    assert len(compared) > 100 and all(torch.equal(own[k], state[k]) for k in compared)
    # the stem's first conv: its weight from the checkpoint, its bias from Constant
    assert torch.equal(
        own['downsample_layers.0.0.bias'], torch.full_like(own['downsample_layers.0.0.bias'], 0.5)
    )
    torch.save({'model': {'foo.weight': torch.randn(3)}}, path)
    with pytest.raises(RuntimeError, match='matches none of the UniRepLKNet keys'):
        UniRepLKNet(arch='a', init_cfg=init_cfg).init_weights()
    with pytest.raises(ValueError, match="at most one init_cfg entry of type 'Pretrained', got 2"):
        UniRepLKNet(arch='a', init_cfg=[init_cfg[1], init_cfg[1]])
    with pytest.raises(ValueError, match=r'takes checkpoint \(required\)'):
        UniRepLKNet(arch='a', init_cfg=[init_cfg[0], dict(type=pretrained_type, prefx='b.')])


@pytest.mark.parametrize(
    'init_cfg',
    [
        dict(type='Pretrained', checkpoint='x.pth', prefx='b.'),
        dict(type='Pretrained', prefix='backbone.'),
    ],
)
def test_pretrained_init_cfg_keys_are_checked(init_cfg):
    with pytest.raises(ValueError, match=r'takes checkpoint \(required\), prefix and map_location'):
        UniRepLKNet(arch='a', init_cfg=init_cfg)


def test_load_reports_unmatched_keys(tmp_path):
    state = classification_state_dict('a')
    state['stages.0.0.extra'] = torch.randn(3)
    path = tmp_path / 'ckpt.pth'
    torch.save(state, path)
    result = UniRepLKNet(arch='a').load_pretrained(str(path))
    assert result['unexpected'] == ['stages.0.0.extra']
    # norm0..norm3 exist only in the backbone form: reported missing
    assert result['missing'] == [f'norm{i}.{p}' for i in range(4) for p in ('bias', 'weight')]


def test_load_errors(tmp_path):
    path = tmp_path / 'ckpt.pth'
    torch.save(classification_state_dict('a'), path)
    with pytest.raises(RuntimeError, match='another variant'):
        UniRepLKNet(arch='f').load_pretrained(str(path))
    torch.save({'model': {'foo.weight': torch.randn(3), 'bar': torch.randn(2)}}, path)
    with pytest.raises(RuntimeError, match='matches none'):
        UniRepLKNet(arch='a', init_cfg=dict(type='Pretrained', checkpoint=str(path))).init_weights()
    with pytest.raises(FileNotFoundError):
        UniRepLKNet(arch='a').load_pretrained(str(tmp_path / 'missing.pth'))
    # a URL that cannot be fetched (nothing listens on the discard port): how to give a local file
    url = 'http://127.0.0.1:9/mmunirep_test_unreachable.pth'
    with pytest.raises(
        RuntimeError,
        match=r'could not download .*unreachable\.pth .*'
        r'model\.backbone\.init_cfg\.checkpoint=',
    ):
        UniRepLKNet(arch='a', init_cfg=dict(type='Pretrained', checkpoint=url)).init_weights()


def test_pretrained_argument_is_mapped_with_deprecation(tmp_path):
    path = tmp_path / 'ckpt.pth'
    torch.save(classification_state_dict('a'), path)
    with pytest.warns(DeprecationWarning, match='init_cfg'):
        model = UniRepLKNet(arch='a', pretrained=str(path))
    assert model.init_cfg == dict(type='Pretrained', checkpoint=str(path))
    with pytest.raises(ValueError, match='not both'):
        UniRepLKNet(
            arch='a', pretrained=str(path), init_cfg=dict(type='Pretrained', checkpoint='x')
        )


def test_default_init_is_random_not_zero():
    model = UniRepLKNet(arch='a')
    model.init_weights()
    w = model.stages[2][0].pwconv1[1].weight
    assert 0.01 < w.std().item() < 0.03  # trunc_normal(std=0.02)


# --------------------------------------------------------------------------------------------
# argument validation
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    'kwargs, match',
    [
        (dict(arch='z'), 'unknown arch'),
        (dict(arch=dict(depths=(1, 1, 1, 1))), 'needs depths and dims'),
        (dict(arch=dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))), 'no default kernel_sizes'),
        (
            dict(
                arch=dict(
                    depths=(1, 1, 1, 2), dims=(8, 16, 32, 64), kernel_sizes=((3,), (3,), (3,), (3,))
                )
            ),
            'stage 3 has depth 2',
        ),
        (dict(out_indices=(4,)), 'out_indices'),
        (dict(out_indices=(1, 1)), 'unique'),
        (dict(frozen_stages=4), 'frozen_stages'),
        (dict(frozen_stages=-2), 'frozen_stages'),
        (dict(norm_cfg=dict(type='GN')), "'BN' or 'SyncBN'"),
        (dict(drop_path_rate=1.5), 'drop_path_rate'),
    ],
)
def test_bad_arguments(kwargs, match):
    kwargs.setdefault('arch', 'a')
    with pytest.raises(ValueError, match=match):
        UniRepLKNet(**kwargs)


def test_custom_arch_dict_and_syncbn_config():
    model = UniRepLKNet(
        arch=dict(
            depths=(1, 1, 2, 1), dims=(8, 16, 32, 64), kernel_sizes=((3,), (7,), (9, 5), (17,))
        ),
        norm_cfg=dict(type='SyncBN', momentum=0.03),
    )
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(isinstance(m, nn.SyncBatchNorm) and m.momentum == 0.03 for m in bns)
    model.eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [8, 16, 32, 64]


def test_downsample_norm_cfg_batchnorm_option():
    """downsample_norm_cfg=BN swaps exactly the 9 LayerNorms of arch A (2 stem, 3 down-sampling,
    4 outputs) and nothing else; the default stays the paper's LayerNorm network; loading a
    checkpoint of the other kind fails naming the flag; re-parameterization still agrees."""
    paper = UniRepLKNet(arch='a')
    bn = UniRepLKNet(arch='a', downsample_norm_cfg=dict(type='BN'))
    assert sum(isinstance(m, LayerNorm2d) for m in paper.modules()) == 9
    assert not any(isinstance(m, LayerNorm2d) for m in bn.modules())
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules())
    assert n_bn - sum(isinstance(m, nn.BatchNorm2d) for m in paper.modules()) == 9
    assert set(paper.state_dict()) <= set(bn.state_dict())  # same names, plus BN buffers
    with pytest.raises(RuntimeError, match=r"downsample_norm_cfg=dict\(type='BN'\)"):
        paper.load_state_dict(bn.state_dict())
    with pytest.raises(RuntimeError, match='downsample_norm_cfg=None'):
        bn.load_state_dict(paper.state_dict())
    # trained-looking BN statistics (the 9 new BNs too), then the deploy structure agrees
    randomize(bn).eval()
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        ref = bn(x)
        bn.switch_to_deploy()
        out = bn(x)
    assert len(ref) == len(out) > 0
    for r, o in zip(ref, out):
        assert rel_err(o, r) < 1e-5


# --------------------------------------------------------------------------------------------
# layer-wise decay ids (REFERENCE.md)
# --------------------------------------------------------------------------------------------
def test_get_layer_depth_follows_the_authors_rule():
    """The authors' rule (stage 2's deep end and num_layers=9: test_engine/test_layer_decay.py)."""
    model = UniRepLKNet(arch='a')
    f = model.get_layer_depth
    assert f('backbone.downsample_layers.0.0.weight') == (0, 14)
    assert f('backbone.downsample_layers.1.0.weight')[0] == 2
    assert f('backbone.downsample_layers.2.1.bias')[0] == 3
    assert f('backbone.downsample_layers.3.0.weight')[0] == 12
    assert f('backbone.stages.0.1.dwconv.weight')[0] == 1
    assert f('backbone.stages.1.0.gamma')[0] == 2
    assert [f(f'backbone.stages.2.{j}.gamma')[0] for j in range(9)] == [3, 3, 3, 4, 4, 4, 5, 5, 5]
    assert f('backbone.stages.3.0.gamma')[0] == 12
    assert f('backbone.norm2.weight')[0] == 13
    assert f('neck.fpn_convs.0.conv.weight')[0] == 13
    assert f('stages.0.0.gamma', prefix='') == (1, 14)


# --------------------------------------------------------------------------------------------
# figures of REFERENCE.md: params (inference structure, 1000-class head) and FLOPs @224
# --------------------------------------------------------------------------------------------
class Classifier(nn.Module):
    def __init__(self, arch):
        super().__init__()
        self.backbone = UniRepLKNet(arch=arch, out_indices=(3,), deploy=True)
        self.head = nn.Linear(self.backbone.dims[-1], 1000)

    def forward(self, x):
        return self.head(self.backbone(x)[0].mean((2, 3)))


@pytest.mark.parametrize(
    'arch, params_m, flops_g',
    [
        ('a', 4.4, 0.6),
        ('f', 6.2, 0.9),
        ('p', 10.7, 1.6),
        ('n', 18.3, 2.8),
        ('t', 31, 4.9),
        ('s', 56, 9.1),
        ('b', 98, None),
        ('l', 218, None),
        ('xl', 386, None),
    ],
)
def test_params_and_flops_match_the_paper(arch, params_m, flops_g):
    if flops_g is None:  # parameters only: no weights needed
        with torch.device('meta'):
            model = Classifier(arch)
    else:
        model = Classifier(arch)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    unit = 1 if params_m >= 20 else 0.1  # the table's precision (it rounds S, truncates XL)
    assert abs(params - params_m) < unit
    if flops_g is not None:
        from mmengine.analysis import FlopAnalyzer

        with torch.no_grad():
            flops = (
                FlopAnalyzer(model, torch.randn(1, 3, 224, 224))
                .unsupported_ops_warnings(False)
                .uncalled_modules_warnings(False)
                .total()
                / 1e9
            )
        assert round(flops, 1) == flops_g


def test_any_load_of_the_other_structure_fails_clearly(tmp_path):
    """A training checkpoint into a deploy model and the reverse, through load_pretrained (which
    checks before loading) and through load_state_dict(strict=False), as mmengine's Runner
    loads (a pre-hook): each message names what was loaded and the flag that fits."""
    deploy = UniRepLKNet(arch='a')
    deploy.switch_to_deploy()
    states = dict(training=classification_state_dict('a'), deploy=deploy.state_dict())
    for loaded, flag in (('deploy', 'deploy=True'), ('training', 'deploy=False')):
        path = tmp_path / f'{loaded}.pth'
        torch.save(states[loaded], path)
        model = UniRepLKNet(arch='a', deploy=loaded == 'training')
        with pytest.raises(RuntimeError, match=rf'^{re.escape(str(path))} does not fit .*{flag}'):
            model.load_pretrained(str(path))
        state = {k: v for k, v in states[loaded].items() if not k.startswith(('head.', 'norm.'))}
        with pytest.raises(
            RuntimeError, match=rf'^the state dict being loaded does not fit .*{flag}'
        ):
            model.load_state_dict(state, strict=False)


def test_grn_is_finite_under_fp16():
    """A large fp16 map would overflow the naive spatial norm; GRN computes it in fp32."""
    torch.manual_seed(0)
    grn = GRN(8)
    with torch.no_grad():
        grn.gamma.normal_(0, 0.5)
        grn.beta.normal_(0, 0.5)
    # spatial L2 norms 64 * (250 .. 3000), the largest > fp16 max (65504); channels of different
    # norms, so that GRN's normalized norms Nx are far from 1 and a wrong one shows
    x = torch.randn(2, 64, 64, 8) * torch.linspace(250, 3000, 8)
    naive = torch.norm(x.half(), p=2, dim=(1, 2))
    assert not torch.isfinite(naive).all()  # the hazard is real
    out = grn(x.half())
    # GRN's formula in fp64 on the same fp16 input: Gx = ||x||_2 over H, W per channel,
    # Nx = Gx / (mean over channels of Gx + 1e-6), GRN(x) = x * (gamma * Nx + 1) + beta
    x64, gamma, beta = x.half().double(), grn.gamma.double(), grn.beta.double()
    gx = x64.square().sum(dim=(1, 2), keepdim=True).sqrt()
    nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
    ref = x64 * (gamma * nx + 1) + beta
    assert torch.isfinite(out).all()
    assert rel_err(out.double(), ref) < 2e-3  # fp16 rounding of Nx and of the output


@pytest.mark.parametrize('downsample_norm_cfg', [None, dict(type='BN')], ids=['LN', 'BN'])
@pytest.mark.parametrize('deploy', [False, True], ids=['training', 'deploy'])
def test_outputs_are_contiguous_nchw(downsample_norm_cfg, deploy):
    """The features are contiguous NCHW maps, whatever layout the blocks ran in: mmcv's compiled
    ops (the RoI heads' RoIAlign) read their input's memory as NCHW."""
    model = UniRepLKNet('a', downsample_norm_cfg=downsample_norm_cfg, deploy=deploy).eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 96, 64))
    assert [tuple(o.shape) for o in outs] == [
        (2, 40 * 2**i, 24 // 2**i, 16 // 2**i) for i in range(4)
    ]
    assert all(o.is_contiguous() for o in outs)


@pytest.mark.parametrize('shape', [(2, 7, 9, 48), (1, 128, 96, 24)])
def test_grn_spatial_norm_is_torch_norm_within_fp32_rounding(shape):
    """The sum-of-squares form on an NHWC map and the exported form on an NCHW map (the root of
    pixels times the global average pool of the squares), against ``torch.norm`` in fp64; under
    bf16 autocast both stay fp32, and in fp64 both are fp64."""
    x = torch.randn(shape) * 3
    ref = torch.norm(x.double(), p=2, dim=(1, 2), keepdim=True)
    tol = 1e-5  # the rounding of an fp32 sum of up to 12288 squares
    forms = {
        'NHWC': spatial_l2_norm,
        'NCHW': lambda t: pooled_l2_norm(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1),
    }
    for name, norm in forms.items():
        out = norm(x)
        assert out.dtype == torch.float32 and out.shape == ref.shape, name
        assert rel_err(out.double(), ref) < tol, name
        with torch.autocast('cpu', dtype=torch.bfloat16):
            under_autocast = norm(x.bfloat16())
        assert under_autocast.dtype == torch.float32, name
        assert rel_err(under_autocast.double(), ref) < 1e-2, name  # the input's bf16 rounding
        in_fp64 = norm(x.double())
        assert in_fp64.dtype == torch.float64 and rel_err(in_fp64, ref) < 1e-12, name


@pytest.mark.slow
def test_backbone_needs_only_torch_mmengine_timm():
    import subprocess
    import sys

    code = (
        'import sys, torch, mmunirep\n'
        'from mmunirep.models import UniRepLKNet\n'
        'm = UniRepLKNet(arch="a"); m.switch_to_deploy()\n'
        'bad = sorted({n.split(".")[0] for n in sys.modules} & {"mmdet", "mmseg", "mmcv"})\n'
        'assert not bad, bad\n'
    )
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_frozen_stages_stay_frozen_after_reparameterization():
    model = UniRepLKNet(arch='a', frozen_stages=1).train()
    model.switch_to_deploy()
    for i in range(4):
        for p in list(model.downsample_layers[i].parameters()) + list(model.stages[i].parameters()):
            assert p.requires_grad == (i > 1)
    # also through the module-level function, which converts the blocks one by one
    model = UniRepLKNet(arch='a', frozen_stages=0)
    reparameterize_unireplknet(model)
    assert not any(p.requires_grad for p in model.stages[0].parameters())
    assert all(p.requires_grad for p in model.stages[1].parameters())


def test_an_unbatched_image_is_refused_with_the_shape_expected():
    with pytest.raises(
        ValueError,
        match=r'a batch of images \(N, C, H, W\), got a tensor of '
        r'shape \(3, 64, 64\) \(one image: x\.unsqueeze\(0\)\)',
    ):
        UniRepLKNet(arch='a')(torch.randn(3, 64, 64))


def test_a_pretrained_checkpoint_with_nan_is_refused(tmp_path):
    state = classification_state_dict('a')
    state['stages.2.3.pwconv1.1.weight'][1, 2] = float('nan')
    path = tmp_path / 'nan.pth'
    torch.save(state, path)
    model = UniRepLKNet(arch='a', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(
        RuntimeError,
        match=r'NaN or Inf in 1 tensors, e\.g\. '
        r'stages\.2\.3\.pwconv1\.1\.weight \(1 of',
    ):
        model.init_weights()


def _onednn_linear_calls(monkeypatch) -> list:
    """Records the post-op (``'gelu'`` or ``'none'``) of each oneDNN linear product."""
    calls = []
    op = onednn_linear._onednn_linear_op()
    if op is None:
        pytest.skip('torch built without oneDNN')

    def recorded(x, weight, bias, attr, *args):
        calls.append(attr)
        return op(x, weight, bias, attr, *args)

    monkeypatch.setattr(onednn_linear, '_onednn_linear_op', lambda: recorded)
    return calls


def _block_calls(monkeypatch, method: str = '_inference_residual') -> list:
    """Records each call of one of the blocks' forms of their residual branch."""
    calls = []
    original = getattr(UniRepLKNetBlock, method)

    def recorded(self, x):
        calls.append(tuple(x.shape))
        return original(self, x)

    monkeypatch.setattr(UniRepLKNetBlock, method, recorded)
    return calls


@pytest.mark.parametrize('deploy', [False, True], ids=['training', 'deploy'])
@pytest.mark.parametrize('downsample_norm_cfg', [None, dict(type='BN')], ids=['LN', 'BN'])
@pytest.mark.parametrize('batch', [1, 2])
def test_inference_path_equals_the_gradient_path(monkeypatch, deploy, downsample_norm_cfg, batch):
    """Without gradient recording the blocks take the inference path (squeeze-and-excitation and
    GRN factors folded into the linear layers' weights where the map is large, in-place products
    elsewhere); its features equal those of the path that records gradients within fp32
    rounding. A 96x96 image gives maps both larger (stride 4, 8) and smaller (stride 32) than the
    layers' widths, so both forms of each product run. Both linear layers of every block run
    through oneDNN, the first with its GELU."""
    model = randomize(
        UniRepLKNet(arch=TINY_ARCH, downsample_norm_cfg=downsample_norm_cfg, drop_path_rate=0.0)
    ).eval()
    if deploy:
        reparameterize_unireplknet(model)
    x = torch.randn(batch, 3, 96, 96)
    calls = _block_calls(monkeypatch)
    linear_calls = _onednn_linear_calls(monkeypatch)
    with torch.no_grad():
        fast = model(x)
    assert len(calls) == sum(TINY_ARCH['depths'])
    assert linear_calls == ['gelu', 'none'] * len(calls)
    recorded = model(x.requires_grad_())
    for a, b in zip(fast, recorded):
        assert a.is_contiguous()
        assert rel_err(a, b.detach()) < 1e-5  # fp32 rounding of reordered products


@pytest.mark.parametrize('deploy', [False, True], ids=['training', 'deploy'])
def test_inference_path_leaves_the_block_input_unchanged(deploy):
    """The in-place products touch only the block's own maps, never the input it was given."""
    model = randomize(UniRepLKNet(arch=TINY_ARCH)).eval()
    if deploy:
        reparameterize_unireplknet(model)
    for block in (model.stages[1][0], model.stages[2][1]):
        channels = block.pwconv2[0].out_features
        x = torch.randn(1, channels, 12, 12)
        before = x.clone()
        with torch.no_grad():
            out = block(x)
        assert torch.equal(x, before)
        assert rel_err(out, x) > 1e-3  # the block did change its output


@pytest.mark.parametrize('pixels', [(2, 3), (9, 8)], ids=['small-map', 'large-map'])
@pytest.mark.parametrize('inplace', [False, True])
@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('batch', [1, 3])
@pytest.mark.parametrize('gelu', [False, True])
def test_scaled_linear_is_the_linear_of_the_scaled_map(pixels, inplace, bias, batch, gelu):
    """Both forms (factors in the weight for one image whose map has more pixels than the layer
    has outputs, factors on the map otherwise) give ``linear(x * scale)``, then GELU if asked;
    only the in-place product on the map changes ``x``."""
    torch.manual_seed(0)
    linear = nn.Linear(12, 16, bias=bias)
    x = torch.randn(batch, *pixels, 12)
    scale = torch.rand(batch, 1, 1, 12) + 0.5
    with torch.no_grad():
        expected = nn.functional.linear(
            x.double() * scale.double(), linear.weight.double(),
            None if linear.bias is None else linear.bias.double(),
        )  # fmt: skip
        expected = nn.functional.gelu(expected) if gelu else expected
        before = x.clone()
        out = scaled_linear(x, scale, linear, inplace=inplace, gelu=gelu)
    assert out.shape == (batch, *pixels, 16)
    assert rel_err(out.double(), expected) < 1e-6
    folded = pixels[0] * pixels[1] > 16 and batch == 1
    assert torch.equal(x, before) == (folded or not inplace)


@pytest.mark.parametrize('deploy', [False, True], ids=['training', 'deploy'])
def test_export_form_equals_the_gradient_path(monkeypatch, deploy):
    """The blocks' form for the ONNX export (NCHW throughout: 1x1 convolutions, the
    squeeze-and-excitation's convolutions, GRN's pooled norm) equals the path that records
    gradients within fp32 rounding, in both structures and for a batch of two."""
    model = randomize(UniRepLKNet(arch=TINY_ARCH, drop_path_rate=0.0)).eval()
    if deploy:
        reparameterize_unireplknet(model)
    x = torch.randn(2, 3, 96, 64)
    calls = _block_calls(monkeypatch, '_export_residual')
    with torch.no_grad(), mock.patch('torch.onnx.is_in_onnx_export', return_value=True):
        exported_form = model(x)
    assert len(calls) == sum(TINY_ARCH['depths'])
    recorded = model(x.requires_grad_())
    for a, b in zip(exported_form, recorded):
        assert rel_err(a, b.detach()) < 1e-5  # fp32 rounding of reordered products


def test_onnx_export_runs_the_blocks_in_nchw_and_keeps_batch_and_size_dynamic(
    monkeypatch, tmp_path
):
    """A TorchScript-based export without gradient recording takes the blocks' export form;
    other tracing (a FLOP count's) and ``torch.export`` (under the dynamo-based exporter too) do
    not. The blocks add no transpose to the graph (the only ones are the channels-first layer
    norms'), and the exported deploy backbone equals PyTorch in onnxruntime at other batch sizes
    and image sizes, within fp32 rounding."""
    import onnx
    import onnxruntime as ort

    torch.manual_seed(4)
    model = reparameterize_unireplknet(randomize(UniRepLKNet(arch=TINY_ARCH)).eval())
    path = str(tmp_path / 'backbone.onnx')
    dynamic = {'input': {0: 'batch', 2: 'height', 3: 'width'}}
    calls = _block_calls(monkeypatch, '_export_residual')
    with torch.no_grad():
        torch.jit.trace(model, torch.randn(1, 3, 96, 96), check_trace=False)
        with mock.patch('torch.onnx.is_in_onnx_export', return_value=True):
            torch.export.export(model, (torch.randn(1, 3, 96, 96),))
        assert calls == []
        torch.onnx.export(
            model, (torch.randn(1, 3, 96, 96),), path, dynamo=False, opset_version=17,
            input_names=['input'], dynamic_axes=dynamic,
        )  # fmt: skip
    assert len(calls) == sum(TINY_ARCH['depths'])
    ops = [node.op_type for node in onnx.load(path).graph.node]
    layer_norms = sum(isinstance(m, LayerNorm2d) for m in model.modules())
    assert ops.count('Transpose') == 2 * layer_norms
    assert 'MatMul' not in ops and 'Gemm' not in ops
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    for shape in [(1, 3, 96, 96), (2, 3, 64, 128), (3, 3, 160, 96)]:
        x = torch.randn(shape)
        with torch.no_grad():
            expected = model(x)
        outputs = session.run(None, {'input': x.numpy()})
        assert len(outputs) == len(expected) == 4
        for out, ref in zip(outputs, expected):
            assert rel_err(torch.from_numpy(out), ref) < 1e-5  # fp32 rounding


def test_channels_first_layer_norm_exports_its_affine_part_as_a_conv():
    """The LayerNorm's export form (no affine parameters, then a 1x1 depthwise conv with them)
    equals timm's LayerNorm2d within fp32 rounding; outside an export it is timm's."""
    torch.manual_seed(0)
    norm = ChannelsFirstLayerNorm(24, eps=1e-6)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(2, 24, 9, 7) * 2 + 1
    reference = LayerNorm2d(24, eps=1e-6)
    reference.load_state_dict(norm.state_dict())
    with torch.no_grad():
        expected = reference(x)
        assert torch.equal(norm(x), expected)
        with mock.patch('torch.onnx.is_in_onnx_export', return_value=True):
            exported_form = norm(x)
    assert rel_err(exported_form, expected) < 1e-6


def test_squeeze_excitation_is_the_authors_conv_form():
    """The 1x1 convs run as linear layers on the pooled vector; the result is the authors'
    pooling, conv, ReLU, conv, sigmoid and product."""
    torch.manual_seed(0)
    se = SEBlock(16, 4)
    x = torch.randn(2, 16, 7, 5)
    w = torch.sigmoid(se.up(torch.relu(se.down(nn.functional.adaptive_avg_pool2d(x, 1)))))
    assert rel_err(se(x), x * w) < 1e-6
