"""The ADE20K configs: each builds through MMSegmentation's registry with the authors' recipe and
the paper's parameter count, and the backbone resolves from MMSegmentation's scope."""

import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmunirep  # noqa: F401
from mmunirep.models import UniRepLKNet

from helpers import ROOT

SEG_DIR = osp.join(ROOT, 'configs', 'segmentation')
QUICKSTART = osp.join(SEG_DIR, 'quickstart_unireplknet_a_shapes.py')
EXAMPLE = osp.join(SEG_DIR, 'example_mmseg_project_fcn.py')
URL = 'https://huggingface.co/DingXiaoH/UniRepLKNet/resolve/main/'
DIMS = dict(
    t=(80, 160, 320, 640),
    s=(96, 192, 384, 768),
    b=(128, 256, 512, 1024),
    l=(192, 384, 768, 1536),
    xl=(256, 512, 1024, 2048),
)

# config -> arch, crop, drop path, checkpoint, (num_layers, decay_rate), with_cp, paper params (M)
PAPER = {
    'unireplknet_t_1k_upernet_160k_512.py': (
        't',
        512,
        0.2,
        'unireplknet_t_in1k_224_acc83.21.pth',
        (9, 1.0),
        False,
        61,
    ),
    'unireplknet_s_1k_upernet_160k_512.py': (
        's',
        512,
        0.3,
        'unireplknet_s_in1k_224_acc83.91.pth',
        (12, 0.9),
        True,
        86,
    ),
    'unireplknet_s_22k_upernet_160k_512.py': (
        's',
        512,
        0.3,
        'unireplknet_s_in22k_to_in1k_384_acc86.44.pth',
        (12, 0.9),
        True,
        86,
    ),
    'unireplknet_s_22k_upernet_160k_640.py': (
        's',
        640,
        0.3,
        'unireplknet_s_in22k_to_in1k_384_acc86.44.pth',
        (12, 0.9),
        True,
        86,
    ),
    'unireplknet_b_22k_upernet_160k_640.py': (
        'b',
        640,
        0.3,
        'unireplknet_b_in22k_to_in1k_384_acc87.40.pth',
        (12, 0.9),
        True,
        130,
    ),
    'unireplknet_l_22k_upernet_160k_640.py': (
        'l',
        640,
        0.4,
        'unireplknet_l_in22k_to_in1k_384_acc87.88.pth',
        (12, 0.85),
        True,
        254,
    ),
    'unireplknet_xl_22k_upernet_160k_640.py': (
        'xl',
        640,
        0.3,
        'unireplknet_xl_in22k_to_in1k_384_acc87.96.pth',
        (12, 0.9),
        True,
        425,
    ),
}
ALL_CONFIGS = sorted(osp.basename(p) for p in glob.glob(osp.join(SEG_DIR, '*.py')))


def build_segmentor(cfg):
    """The config's model on the meta device: its structure and parameter count, no weights."""
    from mmseg.registry import MODELS

    init_default_scope('mmseg')
    cfg.model.backbone.init_cfg = None  # nothing is downloaded
    cfg.model.pretrained = None
    with torch.device('meta'):
        return MODELS.build(cfg.model)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_every_config_is_covered():
    assert set(PAPER) | {osp.basename(QUICKSTART), osp.basename(EXAMPLE)} == set(ALL_CONFIGS)


@pytest.mark.parametrize('name', ALL_CONFIGS)
def test_config_builds_through_mmseg_registry(name):
    cfg = Config.fromfile(osp.join(SEG_DIR, name))
    assert cfg.default_scope == 'mmseg'
    assert cfg.custom_imports == dict(imports=['mmunirep'], allow_failed_imports=False)
    model = build_segmentor(cfg)
    assert type(model).__name__ == 'EncoderDecoder'
    assert isinstance(model.backbone, UniRepLKNet)
    dims = model.backbone.dims
    head_in = model.decode_head.in_channels
    assert list(head_in if isinstance(head_in, (list, tuple)) else [head_in]) == list(
        dims if name != osp.basename(EXAMPLE) else dims[3:]
    )
    assert model.auxiliary_head.in_channels == dims[2] and model.auxiliary_head.in_index == 2
    if name in PAPER:
        arch, _, _, _, _, _, paper_m = PAPER[name]
        assert dims == DIMS[arch]
        assert model.decode_head.num_classes == 150 == model.auxiliary_head.num_classes
        assert type(model.decode_head).__name__ == 'UPerHead'
        assert type(model.auxiliary_head).__name__ == 'FCNHead'
        # the paper counts the re-parameterized model without the auxiliary head
        model.auxiliary_head = None
        model.backbone.switch_to_deploy()
        assert n_params(model) / 1e6 == pytest.approx(paper_m, rel=0.01)


@pytest.mark.parametrize('name', sorted(PAPER))
def test_config_follows_the_authors_recipe(name):
    arch, crop, dpr, ckpt, (num_layers, decay), with_cp, _ = PAPER[name]
    cfg = Config.fromfile(osp.join(SEG_DIR, name))
    bb = cfg.model.backbone
    assert bb.type == 'mmunirep.UniRepLKNet' and bb.arch == arch
    assert bb.drop_path_rate == dpr and bb.with_cp is with_cp and bb.use_lk_op is False
    assert bb.norm_cfg == dict(type='SyncBN') and bb.out_indices == (0, 1, 2, 3)
    assert bb.init_cfg == dict(type='Pretrained', checkpoint=URL + ckpt)
    assert cfg.model.decode_head.norm_cfg.type == 'SyncBN'
    assert cfg.model.test_cfg == dict(mode='whole')
    assert cfg.model.data_preprocessor.size == (crop, crop)
    ow = cfg.optim_wrapper
    assert ow.type == 'OptimWrapper'
    assert ow.constructor == 'UniRepLKNetLayerDecayOptimWrapperConstructor'
    assert ow.paramwise_cfg == dict(num_layers=num_layers, decay_rate=decay)
    assert ow.optimizer == dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
    warmup, poly = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.begin, warmup.end, warmup.by_epoch) == (
        'LinearLR',
        1e-6,
        0,
        1500,
        False,
    )
    assert (poly.type, poly.power, poly.eta_min, poly.begin, poly.end, poly.by_epoch) == (
        'PolyLR',
        1.0,
        0.0,
        1500,
        160000,
        False,
    )
    assert cfg.train_cfg.type == 'IterBasedTrainLoop' and cfg.train_cfg.max_iters == 160000
    assert cfg.train_dataloader.batch_size == 2
    # the lr is not scaled with the GPU count unless `tools/train.py --auto-scale-lr` asks
    assert cfg.auto_scale_lr == dict(enable=False, base_batch_size=16)
    assert cfg.train_dataloader.dataset.type == 'ADE20KDataset'

    scale = (4 * crop, crop)
    train = {t.type: t for t in cfg.train_dataloader.dataset.pipeline}
    assert train['RandomResize'].scale == scale and train['RandomResize'].ratio_range == (0.5, 2)
    assert train['RandomCrop'].crop_size == (crop, crop)
    assert train['LoadAnnotations'].reduce_zero_label is True
    for loader in (cfg.val_dataloader, cfg.test_dataloader):
        types = [t.type for t in loader.dataset.pipeline]
        assert types == [
            'LoadImageFromFile',
            'Resize',
            'ResizeToMultiple',
            'LoadAnnotations',
            'PackSegInputs',
        ]
        assert loader.dataset.pipeline[1].scale == scale
        assert loader.dataset.pipeline[1].keep_ratio is True
        assert loader.dataset.pipeline[2].size_divisor == 32
    tta = cfg.tta_pipeline[1]
    assert tta.type == 'TestTimeAug' and cfg.tta_model.type == 'SegTTAModel'
    assert [t.scale for t in tta.transforms[0]] == [
        (int(scale[0] * r), int(scale[1] * r)) for r in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    ]
    assert tta.transforms[1][0].type == 'ResizeToMultiple'
    assert [t.prob for t in tta.transforms[2]] == [0.0, 1.0]


def test_the_two_examples_fine_tune_alike():
    """Both examples from existing projects fine-tune with AdamW and the layer-wise decay (the
    base configs' SGD is for ResNets), and the FCN example's lr decays to 0, not to the base's
    eta_min of 1e-4 (the AdamW lr itself)."""
    det = Config.fromfile(
        osp.join(ROOT, 'configs', 'detection', 'example_mmdet_project_mask_rcnn.py')
    )
    seg = Config.fromfile(EXAMPLE)
    for cfg in (det, seg):
        ow = cfg.optim_wrapper
        assert ow.constructor == 'UniRepLKNetLayerDecayOptimWrapperConstructor'
        assert ow.optimizer == dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
        assert ow.paramwise_cfg.num_layers == 12
    warmup, poly = seg.param_scheduler
    assert (warmup.type, warmup.end, poly.type, poly.eta_min, poly.end) == (
        'LinearLR',
        1500,
        'PolyLR',
        0.0,
        seg.train_cfg.max_iters,
    )


@pytest.mark.parametrize('backbone_type', ['UniRepLKNet', 'mmunirep.UniRepLKNet'])
def test_backbone_resolves_from_mmseg_scope(backbone_type):
    from mmseg.registry import MODELS

    init_default_scope('mmseg')
    backbone = MODELS.build(dict(type=backbone_type, arch='a'))
    assert isinstance(backbone, UniRepLKNet)
    outs = backbone(torch.rand(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [40, 80, 160, 320]
