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
# the configs beyond the paper (untrained): config -> arch, head, dataset, crop, iterations,
# drop path, (num_layers, decay_rate), with_cp, checkpoint
NEW = {
    'unireplknet_b_22k_mask2former_160k_640.py': (
        'b',
        'Mask2FormerHead',
        'ADE20KDataset',
        (640, 640),
        160000,
        0.3,
        (12, 0.9),
        True,
        'unireplknet_b_in22k_to_in1k_384_acc87.40.pth',
    ),
    'unireplknet_l_22k_mask2former_160k_640.py': (
        'l',
        'Mask2FormerHead',
        'ADE20KDataset',
        (640, 640),
        160000,
        0.4,
        (12, 0.85),
        True,
        'unireplknet_l_in22k_to_in1k_384_acc87.88.pth',
    ),
    'unireplknet_t_1k_upernet_80k_cityscapes_512x1024.py': (
        't',
        'UPerHead',
        'CityscapesDataset',
        (512, 1024),
        80000,
        0.2,
        (9, 1.0),
        False,
        'unireplknet_t_in1k_224_acc83.21.pth',
    ),
    'unireplknet_s_1k_upernet_80k_cityscapes_512x1024.py': (
        's',
        'UPerHead',
        'CityscapesDataset',
        (512, 1024),
        80000,
        0.3,
        (12, 0.9),
        True,
        'unireplknet_s_in1k_224_acc83.91.pth',
    ),
}
CUSTOM = osp.join(SEG_DIR, 'example_custom_dataset_upernet.py')
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
    others = {osp.basename(QUICKSTART), osp.basename(EXAMPLE), osp.basename(CUSTOM)}
    assert set(PAPER) | set(NEW) | others == set(ALL_CONFIGS)


@pytest.mark.parametrize('name', ALL_CONFIGS)
def test_config_builds_through_mmseg_registry(name):
    cfg = Config.fromfile(osp.join(SEG_DIR, name))
    assert cfg.default_scope == 'mmseg'
    # Mask2Former's pixel decoder is MMDetection's
    imports = ['mmdet.models', 'mmunirep'] if 'mask2former' in name else ['mmunirep']
    assert cfg.custom_imports == dict(imports=imports, allow_failed_imports=False)
    model = build_segmentor(cfg)
    assert type(model).__name__ == 'EncoderDecoder'
    assert isinstance(model.backbone, UniRepLKNet)
    dims = model.backbone.dims
    head_in = cfg.model.decode_head.in_channels  # Mask2FormerHead does not keep it
    assert list(head_in if isinstance(head_in, (list, tuple)) else [head_in]) == list(
        dims if name != osp.basename(EXAMPLE) else dims[3:]
    )
    if 'mask2former' in name:
        assert not model.with_auxiliary_head
    else:
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


def learning_rates(param_scheduler, max_iters, at):
    """The lr that mmengine's chained schedulers give each iteration in ``at`` (base lr 1)."""
    from mmengine.registry import PARAM_SCHEDULERS

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedulers = [PARAM_SCHEDULERS.build(dict(s, optimizer=optimizer)) for s in param_scheduler]
    rates = {}
    for it in range(max_iters):
        if it in at:
            rates[it] = optimizer.param_groups[0]['lr']
        for scheduler in schedulers:
            scheduler.step()
    return rates


def test_the_ade20k_schedule_is_the_authors_lr_at_every_iteration():
    """mmcv's poly schedule (power 1, to 0, over 160k iterations) multiplied during the first 1500
    by its linear warm-up from 1e-6, as the authors' configs run it, at iterations across warm-up
    and decay: within 0.1%, or 1e-5 of the base lr (mmengine's schedulers span end - begin - 1
    steps, mmcv's end - begin: 1/1500 at most in the warm-up, 1/160000 of the base lr at the
    end). A poly decay that starts after the warm-up is 0.94% off at iteration 1500."""
    cfg = Config.fromfile(osp.join(SEG_DIR, 'unireplknet_s_22k_upernet_160k_640.py'))
    max_iters = cfg.train_cfg.max_iters
    at = {0, 1, 750, 1499, 1500, 1501, 3000, 80000, 159999}
    got = learning_rates(cfg.param_scheduler, max_iters, at)

    def authors(it):  # mmcv's PolyLrUpdaterHook with warmup='linear', warmup_ratio=1e-6
        regular = (1 - it / max_iters) ** 1.0
        if it < 1500:
            return regular * (1 - (1 - it / 1500) * (1 - 1e-6))
        return regular

    for it in sorted(at):
        assert got[it] == pytest.approx(authors(it), rel=1e-3, abs=1e-5), it


@pytest.mark.parametrize('backbone_type', ['UniRepLKNet', 'mmunirep.UniRepLKNet'])
def test_backbone_resolves_from_mmseg_scope(backbone_type):
    from mmseg.registry import MODELS

    init_default_scope('mmseg')
    backbone = MODELS.build(dict(type=backbone_type, arch='a'))
    assert isinstance(backbone, UniRepLKNet)
    outs = backbone(torch.rand(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [40, 80, 160, 320]


@pytest.mark.parametrize('name', sorted(NEW))
def test_new_config_recipe(name):
    """Mask2Former from MMSegmentation's Swin recipe (its custom keys and norm_decay_mult kept,
    the backbone decayed layer by layer instead of by 0.1), UperNet on Cityscapes from its 80k
    config with the authors' ADE20K optimizer; the lr not scaled with the GPU count."""
    arch, head, dataset, crop, iters, dpr, (num_layers, decay), with_cp, ckpt = NEW[name]
    cfg = Config.fromfile(osp.join(SEG_DIR, name))
    bb = cfg.model.backbone
    assert (bb.type, bb.arch, bb.drop_path_rate, bb.with_cp) == (
        'mmunirep.UniRepLKNet',
        arch,
        dpr,
        with_cp,
    )
    assert bb.norm_cfg == dict(type='SyncBN') and bb.use_lk_op is False
    assert bb.init_cfg == dict(type='Pretrained', checkpoint=URL + ckpt)
    assert cfg.model.decode_head.type == head and cfg.model.get('pretrained') is None
    assert cfg.train_dataloader.dataset.type == dataset
    assert cfg.model.data_preprocessor.size == crop
    crop_t = [t for t in cfg.train_dataloader.dataset.pipeline if t.type == 'RandomCrop']
    assert crop_t[0].crop_size == crop
    assert cfg.train_cfg.max_iters == iters and cfg.model.test_cfg.mode == 'whole'
    ow = cfg.optim_wrapper
    assert ow.constructor == 'UniRepLKNetLayerDecayOptimWrapperConstructor'
    assert (ow.paramwise_cfg.num_layers, ow.paramwise_cfg.decay_rate) == (num_layers, decay)
    assert ow.optimizer.type == 'AdamW' and ow.optimizer.lr == 1e-4
    assert ow.optimizer.weight_decay == 0.05
    assert cfg.auto_scale_lr.enable is False
    test_resize = cfg.test_dataloader.dataset.pipeline[1]
    if head == 'Mask2FormerHead':
        embed = dict(lr_mult=1.0, decay_mult=0.0)
        assert ow.paramwise_cfg.custom_keys == dict(
            query_embed=embed, query_feat=embed, level_embed=embed
        )
        assert ow.paramwise_cfg.norm_decay_mult == 0.0
        assert ow.clip_grad == dict(max_norm=0.01, norm_type=2)
        (poly,) = cfg.param_scheduler
        assert (poly.type, poly.power, poly.end) == ('PolyLR', 0.9, iters)
        assert cfg.model.decode_head.num_classes == 150 and test_resize.scale == (2560, 640)
        assert cfg.auto_scale_lr.base_batch_size == 16 == 8 * cfg.train_dataloader.batch_size
    else:
        warmup, poly = cfg.param_scheduler
        assert (warmup.type, warmup.end, poly.type, poly.power, poly.eta_min, poly.end) == (
            'LinearLR',
            1500,
            'PolyLR',
            1.0,
            0.0,
            iters,
        )
        assert cfg.model.decode_head.num_classes == 19 == cfg.model.auxiliary_head.num_classes
        assert test_resize.scale == (2048, 1024)
        # MMSegmentation's 4 GPUs x 2 images
        assert cfg.auto_scale_lr.base_batch_size == 8 == 4 * cfg.train_dataloader.batch_size


def test_mask2former_optimizer_groups():
    """The optimizer's groups from the Mask2Former config: the queries and level embeddings at the
    base lr without weight decay, the backbone's stem at 0.9 ** 13 of the lr, norms undecayed."""
    from mmengine.optim import build_optim_wrapper

    cfg = Config.fromfile(osp.join(SEG_DIR, 'unireplknet_b_22k_mask2former_160k_640.py'))
    model = build_segmentor(cfg)
    optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    group = {id(p): g for g in optimizer.param_groups for p in g['params']}
    params = dict(model.named_parameters())
    assert len(group) == len(params)
    for key in ('query_embed.weight', 'query_feat.weight', 'level_embed.weight'):
        g = group[id(params['decode_head.' + key])]
        assert (g['lr'], g['weight_decay']) == (1e-4, 0.0), key
    stem = group[id(params['backbone.downsample_layers.0.0.weight'])]
    assert stem['lr'] == pytest.approx(1e-4 * 0.9**13) and stem['weight_decay'] == 0.05
    norm = [n for n in params if n.startswith('decode_head.') and '.norms.' in n][0]
    assert group[id(params[norm])]['weight_decay'] == 0.0


def test_custom_dataset_example():
    """Your classes: BaseSegDataset with the classes and palette, both heads' num_classes."""
    cfg = Config.fromfile(CUSTOM)
    n = len(cfg.classes)
    assert cfg.model.decode_head.num_classes == n == cfg.model.auxiliary_head.num_classes
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        ds = loader.dataset
        assert ds.type == 'BaseSegDataset' and ds.metainfo.classes == cfg.classes
        assert len(ds.metainfo.palette) == n and ds.reduce_zero_label is cfg.reduce_zero_label
        load = [t for t in ds.pipeline if t.type == 'LoadAnnotations'][0]
        assert load.reduce_zero_label is cfg.reduce_zero_label


def test_quickstart_learns_and_draws_the_background():
    """The quick start's label 0 (the shapes' background) is a class, not ignored: the model
    predicts it, the mIoU counts it and the drawings paint it as the ground truth's, with the
    generator's class names and palette."""
    from helpers import load_tool

    make_shapes = load_tool('make_shapes_ade20k')
    cfg = Config.fromfile(QUICKSTART)
    assert cfg.classes == make_shapes.SEG_CLASSES and cfg.classes[0] == 'background'
    assert [tuple(c) for c in cfg.palette] == list(make_shapes.SEG_PALETTE)
    assert cfg.model.decode_head.num_classes == 4 == cfg.model.auxiliary_head.num_classes
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        assert loader.dataset.reduce_zero_label is False
        load = [t for t in loader.dataset.pipeline if t.type == 'LoadAnnotations']
        assert load[0].reduce_zero_label is False
