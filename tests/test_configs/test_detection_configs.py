"""The detection configs: each builds through MMDetection's registry with the paper's recipe and
parameter count, and the backbone resolves from MMDetection's scope."""

import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

import mmunirep  # noqa: F401  (registers UniRepLKNet)
from mmunirep.models import UniRepLKNet
from mmunirep.models.backbones.unireplknet import ARCH_SETTINGS

from helpers import ROOT

DET_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', 'detection', '*.py')))
QUICKSTART = osp.join(ROOT, 'configs', 'detection', 'quickstart_unireplknet_a_shapes.py')
MMDET_PROJECT = osp.join(ROOT, 'configs', 'detection', 'example_mmdet_project_mask_rcnn.py')
RECIPES = {  # config -> arch, and the paper's Cascade Mask R-CNN parameter count (millions)
    'unireplknet_t_1k_cascade_3x.py': ('t', 89),
    'unireplknet_s_1k_cascade_3x.py': ('s', 113),
    'unireplknet_s_22k_cascade_3x.py': ('s', 113),
    'unireplknet_b_22k_cascade_3x.py': ('b', 155),
    'unireplknet_l_22k_cascade_3x.py': ('l', 276),
    'unireplknet_xl_22k_cascade_3x.py': ('xl', 443),
}
URL = 'https://huggingface.co/DingXiaoH/UniRepLKNet/resolve/main/'
# the released ImageNet file each config starts from: IN-1K 224 for the IN-1K rows, the
# IN-22K -> IN-1K 384 fine-tuned file for the IN-22K rows (released for S, B, L and XL)
CHECKPOINTS = {
    'unireplknet_t_1k_cascade_3x.py': 'unireplknet_t_in1k_224_acc83.21.pth',
    'unireplknet_s_1k_cascade_3x.py': 'unireplknet_s_in1k_224_acc83.91.pth',
    'unireplknet_s_22k_cascade_3x.py': 'unireplknet_s_in22k_to_in1k_384_acc86.44.pth',
    'unireplknet_b_22k_cascade_3x.py': 'unireplknet_b_in22k_to_in1k_384_acc87.40.pth',
    'unireplknet_l_22k_cascade_3x.py': 'unireplknet_l_in22k_to_in1k_384_acc87.88.pth',
    'unireplknet_xl_22k_cascade_3x.py': 'unireplknet_xl_in22k_to_in1k_384_acc87.96.pth',
}


# the configs beyond the paper (untrained): config -> arch, detector, epochs, drop path, layer
# decay, checkpoint file
NEW = {
    'unireplknet_t_1k_mask_rcnn_1x.py': (
        't',
        'MaskRCNN',
        12,
        0.3,
        0.8,
        CHECKPOINTS['unireplknet_t_1k_cascade_3x.py'],
    ),
    'unireplknet_t_1k_mask_rcnn_3x.py': (
        't',
        'MaskRCNN',
        36,
        0.3,
        0.8,
        CHECKPOINTS['unireplknet_t_1k_cascade_3x.py'],
    ),
    'unireplknet_s_1k_mask_rcnn_1x.py': (
        's',
        'MaskRCNN',
        12,
        0.5,
        0.8,
        CHECKPOINTS['unireplknet_s_1k_cascade_3x.py'],
    ),
    'unireplknet_s_1k_mask_rcnn_3x.py': (
        's',
        'MaskRCNN',
        36,
        0.5,
        0.8,
        CHECKPOINTS['unireplknet_s_1k_cascade_3x.py'],
    ),
    'unireplknet_b_22k_dino_12e.py': (
        'b',
        'DINO',
        12,
        0.6,
        0.8,
        CHECKPOINTS['unireplknet_b_22k_cascade_3x.py'],
    ),
    'unireplknet_b_22k_dino_36e.py': (
        'b',
        'DINO',
        36,
        0.6,
        0.8,
        CHECKPOINTS['unireplknet_b_22k_cascade_3x.py'],
    ),
    'unireplknet_l_22k_dino_12e.py': (
        'l',
        'DINO',
        12,
        0.7,
        0.7,
        CHECKPOINTS['unireplknet_l_22k_cascade_3x.py'],
    ),
    'unireplknet_l_22k_dino_36e.py': (
        'l',
        'DINO',
        36,
        0.7,
        0.7,
        CHECKPOINTS['unireplknet_l_22k_cascade_3x.py'],
    ),
}
EXAMPLES = ['example_custom_dataset_cascade_mask_rcnn.py', 'example_custom_dataset_cascade_rcnn.py']


def _build_detector(cfg):
    """The config's model on the meta device: its structure and parameter count, no weights."""
    from mmdet.registry import MODELS

    with DefaultScope.overwrite_default_scope(cfg.default_scope), torch.device('meta'):
        return MODELS.build(cfg.model)


# ------------------------------------------------------------------------------------------------
def test_config_list_is_complete():
    names = {osp.basename(p) for p in DET_CONFIGS}
    others = {osp.basename(QUICKSTART), osp.basename(MMDET_PROJECT), *EXAMPLES}
    assert names == set(RECIPES) | set(NEW) | others, sorted(
        names ^ (set(RECIPES) | set(NEW) | others)
    )


@pytest.mark.parametrize('path', DET_CONFIGS, ids=[osp.basename(p) for p in DET_CONFIGS])
def test_config_builds(path):
    cfg = Config.fromfile(path)  # also imports custom_imports (mmunirep)
    assert cfg.default_scope == 'mmdet'
    assert 'mmunirep' in cfg.custom_imports['imports']
    name = osp.basename(path)
    if name in RECIPES:  # the authors' recipe, unchanged by the quick start
        arch, _ = RECIPES[name]
        bb = cfg.model.backbone
        assert bb.arch == arch and bb.norm_cfg.type == 'SyncBN' and bb.with_cp
        assert bb.init_cfg == dict(type='Pretrained', checkpoint=URL + CHECKPOINTS[name])
        assert cfg.optim_wrapper.constructor == 'UniRepLKNetLayerDecayOptimWrapperConstructor'
        assert cfg.optim_wrapper.optimizer.type == 'AdamW'
        assert cfg.optim_wrapper.optimizer.lr == pytest.approx(1e-4, rel=1e-12)
        # not scaled with the GPU count unless `tools/train.py --auto-scale-lr` asks
        assert not cfg.auto_scale_lr.enable and cfg.auto_scale_lr.base_batch_size == 16
        # the per-class AP table, as the authors' configs print it
        assert cfg.val_evaluator.classwise and cfg.test_evaluator.classwise
        assert cfg.train_cfg.max_epochs == 36
        assert all(h.norm_cfg.type == 'SyncBN' for h in cfg.model.roi_head.bbox_head)
    cfg.model.backbone.init_cfg = None  # never download pretrained weights in tests
    model = _build_detector(cfg)  # building only; no init_weights (L / XL are large)
    assert isinstance(model.backbone, UniRepLKNet)
    assert list(model.backbone.dims) == list(cfg.model.neck.in_channels)
    assert model.backbone.dims == ARCH_SETTINGS[cfg.model.backbone.arch]['dims']
    if name in RECIPES:
        # the paper's counts (rounded to 1M) are of the re-parameterized model; the training
        # structure's extra dilated branches and BNs add < 1% to it (T 89.10M vs 88.45M, S 113.80
        # vs 112.99, XL 445.37 vs 443.21): +0.1% (T) to +0.7% (S) against the paper's figures
        n = sum(p.numel() for p in model.parameters()) / 1e6
        paper = RECIPES[name][1]
        assert abs(n - paper) <= 0.015 * paper, f'{n:.1f}M parameters, paper {paper}M'
    if name == osp.basename(QUICKSTART):
        assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
        assert Config.fromfile(path).model.backbone.init_cfg is None


def test_backbone_type_resolves_from_mmdet_scope():
    from mmdet.registry import MODELS

    with DefaultScope.overwrite_default_scope('mmdet'):
        plain = MODELS.build(dict(type='UniRepLKNet', arch='a'))
        scoped = MODELS.build(dict(type='mmunirep.UniRepLKNet', arch='a'))
    assert type(plain) is UniRepLKNet and type(scoped) is UniRepLKNet
    x = torch.randn(1, 3, 64, 64)
    plain.eval()
    outs = plain(x)
    assert [tuple(o.shape) for o in outs] == [
        (1, 40, 16, 16),
        (1, 80, 8, 8),
        (1, 160, 4, 4),
        (1, 320, 2, 2),
    ]


@pytest.mark.parametrize('name', sorted(NEW))
def test_new_config_recipe(name):
    """Mask R-CNN from MMDetection's ConvNeXt recipes (1x: single-scale, steps at 8 and 11; 3x:
    multi-scale + crop, steps at 27 and 33) and DINO from its 5-scale Swin-L recipe, each with
    our backbone and the authors' layer-wise decay; the lr not scaled with the GPU count."""
    arch, detector, epochs, dpr, decay, ckpt = NEW[name]
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'detection', name))
    bb = cfg.model.backbone
    assert cfg.model.type == detector
    assert (bb.type, bb.arch, bb.drop_path_rate) == ('mmunirep.UniRepLKNet', arch, dpr)
    assert bb.norm_cfg.type == 'SyncBN' and bb.with_cp and bb.out_indices == (0, 1, 2, 3)
    assert bb.init_cfg == dict(type='Pretrained', checkpoint=URL + ckpt)
    ow = cfg.optim_wrapper
    assert ow.type == 'OptimWrapper'
    assert ow.constructor == 'UniRepLKNetLayerDecayOptimWrapperConstructor'
    assert (ow.paramwise_cfg.num_layers, ow.paramwise_cfg.decay_rate) == (12, decay)
    assert cfg.train_cfg.max_epochs == epochs
    assert cfg.auto_scale_lr == dict(enable=False, base_batch_size=16)
    assert cfg.val_evaluator.classwise and cfg.test_evaluator.classwise
    steps = [s for s in cfg.param_scheduler if s.type == 'MultiStepLR']
    assert len(steps) == 1 and steps[0].end == epochs
    train_types = [t.type for t in cfg.train_dataloader.dataset.pipeline]
    if detector == 'MaskRCNN':
        assert ow.optimizer == dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
        assert steps[0].milestones == ([8, 11] if epochs == 12 else [27, 33])
        warmup = cfg.param_scheduler[0]
        assert (warmup.type, warmup.end, warmup.start_factor) == ('LinearLR', 1000, 0.001)
        assert ('RandomChoice' in train_types) is (epochs == 36)  # 3x: multi-scale + crop
        if epochs == 12:
            resize = cfg.train_dataloader.dataset.pipeline[train_types.index('Resize')]
            assert resize.scale == (1333, 800) and resize.keep_ratio
        assert cfg.model.neck.type == 'FPN'
    else:  # MMDetection's DINO recipe, the backbone decayed layer by layer
        assert ow.optimizer == dict(type='AdamW', lr=1e-4, weight_decay=1e-4)
        assert ow.clip_grad == dict(max_norm=0.1, norm_type=2)
        assert steps[0].milestones == ([11] if epochs == 12 else [27, 33])
        assert 'backbone' not in ow.paramwise_cfg.custom_keys
        assert all(v == dict(decay_mult=0.0) for v in ow.paramwise_cfg.custom_keys.values())
        assert cfg.model.num_feature_levels == 5 and cfg.model.neck.num_outs == 5
        assert cfg.model.num_queries == 900 and 'RandomChoice' in train_types


@pytest.mark.parametrize(
    'name', ['unireplknet_b_22k_dino_12e.py', 'unireplknet_t_1k_mask_rcnn_1x.py']
)
def test_new_config_optimizer_groups(name):
    """The groups the optimizer gets from the config (on the meta device): the heads at the base
    lr, the stem at decay ** 13 of it, and DINO's embeddings (2-D) without weight decay."""
    from mmengine.optim import build_optim_wrapper

    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'detection', name))
    cfg.model.backbone.init_cfg = None
    model = _build_detector(cfg)
    with DefaultScope.overwrite_default_scope('mmdet'):
        optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    group = {
        n: g
        for g in optimizer.param_groups
        for p in g['params']
        for n, q in model.named_parameters()
        if q is p
    }
    lr, wd = cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.optimizer.weight_decay
    decay = cfg.optim_wrapper.paramwise_cfg.decay_rate
    assert len(group) == len(list(model.parameters()))
    assert group['backbone.downsample_layers.0.0.weight']['lr'] == pytest.approx(lr * decay**13)
    assert (
        group['neck.fpn_convs.0.conv.weight' if 'mask' in name else 'neck.convs.0.conv.weight'][
            'lr'
        ]
        == lr
    )
    if 'dino' in name:
        for key in (
            'query_embedding.weight',
            'level_embed',
            'dn_query_generator.label_embedding.weight',
        ):
            assert group[key]['weight_decay'] == 0.0 and group[key]['lr'] == lr, key
        assert group['memory_trans_fc.weight']['weight_decay'] == wd
