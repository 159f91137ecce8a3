"""Segmentation: the ADE20K configs, the quick start, tools/test.py --tta, MMSegmentation's own
tools/train.py on a config that swaps in our backbone, and tools/get_flops.py (CPU, tiny data)."""
import glob
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmunirep  # noqa: F401
from mmunirep.models import UniRepLKNet
from tool_utils import load_tool, tiny_seg_config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SEG_DIR = osp.join(ROOT, 'configs', 'segmentation')
QUICKSTART = osp.join(SEG_DIR, 'quickstart_unireplknet_a_shapes.py')
EXAMPLE = osp.join(SEG_DIR, 'example_mmseg_project_fcn.py')
URL = 'https://huggingface.co/DingXiaoH/UniRepLKNet/resolve/main/'
DIMS = dict(t=(80, 160, 320, 640), s=(96, 192, 384, 768), b=(128, 256, 512, 1024),
            l=(192, 384, 768, 1536), xl=(256, 512, 1024, 2048))

# config -> arch, crop, drop path, checkpoint, (num_layers, decay_rate), with_cp, paper params (M)
PAPER = {
    'unireplknet_t_1k_upernet_160k_512.py':
    ('t', 512, 0.2, 'unireplknet_t_in1k_224_acc83.21.pth', (9, 1.0), False, 61),
    'unireplknet_s_1k_upernet_160k_512.py':
    ('s', 512, 0.3, 'unireplknet_s_in1k_224_acc83.91.pth', (12, 0.9), True, 86),
    'unireplknet_s_22k_upernet_160k_512.py':
    ('s', 512, 0.3, 'unireplknet_s_in22k_to_in1k_384_acc86.44.pth', (9, 0.9), True, 86),
    'unireplknet_s_22k_upernet_160k_640.py':
    ('s', 640, 0.3, 'unireplknet_s_in22k_to_in1k_384_acc86.44.pth', (9, 0.9), True, 86),
    'unireplknet_b_22k_upernet_160k_640.py':
    ('b', 640, 0.3, 'unireplknet_b_in22k_to_in1k_384_acc87.40.pth', (12, 0.9), True, 130),
    'unireplknet_l_22k_upernet_160k_640.py':
    ('l', 640, 0.4, 'unireplknet_l_in22k_to_in1k_384_acc87.88.pth', (12, 0.85), True, 254),
    'unireplknet_xl_22k_upernet_160k_640.py':
    ('xl', 640, 0.3, 'unireplknet_xl_in22k_pretrain.pth', (12, 0.9), True, 425),
}
ALL_CONFIGS = sorted(osp.basename(p) for p in glob.glob(osp.join(SEG_DIR, '*.py')))




make_shapes = load_tool('make_shapes_ade20k')


def build_segmentor(cfg):
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    cfg.model.backbone.init_cfg = None  # nothing is downloaded
    cfg.model.pretrained = None
    return MODELS.build(cfg.model)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


# -- the configs --------------------------------------------------------------------------------
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
    assert list(head_in if isinstance(head_in, (list, tuple)) else [head_in]) == \
        list(dims if name != osp.basename(EXAMPLE) else dims[3:])
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
    assert (warmup.type, warmup.start_factor, warmup.begin, warmup.end, warmup.by_epoch) == \
        ('LinearLR', 1e-6, 0, 1500, False)
    assert (poly.type, poly.power, poly.eta_min, poly.begin, poly.end, poly.by_epoch) == \
        ('PolyLR', 1.0, 0.0, 1500, 160000, False)
    assert cfg.train_cfg.type == 'IterBasedTrainLoop' and cfg.train_cfg.max_iters == 160000
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.auto_scale_lr == dict(enable=True, base_batch_size=16)
    assert cfg.train_dataloader.dataset.type == 'ADE20KDataset'

    scale = (4 * crop, crop)
    train = {t.type: t for t in cfg.train_dataloader.dataset.pipeline}
    assert train['RandomResize'].scale == scale and train['RandomResize'].ratio_range == (0.5, 2)
    assert train['RandomCrop'].crop_size == (crop, crop)
    assert train['LoadAnnotations'].reduce_zero_label is True
    for loader in (cfg.val_dataloader, cfg.test_dataloader):
        types = [t.type for t in loader.dataset.pipeline]
        assert types == ['LoadImageFromFile', 'Resize', 'ResizeToMultiple', 'LoadAnnotations',
                         'PackSegInputs']
        assert loader.dataset.pipeline[1].scale == scale
        assert loader.dataset.pipeline[1].keep_ratio is True
        assert loader.dataset.pipeline[2].size_divisor == 32
    tta = cfg.tta_pipeline[1]
    assert tta.type == 'TestTimeAug' and cfg.tta_model.type == 'SegTTAModel'
    assert [t.scale for t in tta.transforms[0]] == \
        [(int(scale[0] * r), int(scale[1] * r)) for r in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)]
    assert tta.transforms[1][0].type == 'ResizeToMultiple'
    assert [t.prob for t in tta.transforms[2]] == [0., 1.]


@pytest.mark.parametrize('backbone_type', ['UniRepLKNet', 'mmunirep.UniRepLKNet'])
def test_backbone_resolves_from_mmseg_scope(backbone_type):
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    backbone = MODELS.build(dict(type=backbone_type, arch='a'))
    assert isinstance(backbone, UniRepLKNet)
    outs = backbone(torch.rand(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [40, 80, 160, 320]


# -- the quick start on tiny data: tools/train.py, tools/test.py (+ --tta, --show-dir) ----------
@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('shapes'))
    counts = make_shapes.generate(root, num_train=4, num_val=2, size=64, seed=3)
    assert counts == dict(training=4, validation=2)
    return root


def test_make_shapes_is_deterministic_and_ade_formatted(tmp_path):
    import cv2
    import numpy as np
    a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
    for out in (a, b):
        make_shapes.main(['--out', out, '--num-train', '3', '--num-val', '2', '--size', '48',
                          '--seed', '7'])
    for split, prefix, n in (('training', 'train', 3), ('validation', 'val', 2)):
        names = sorted(os.listdir(osp.join(a, 'images', split)))
        assert names == [f'ADE_{prefix}_{i:08d}.jpg' for i in range(n)]
        for name in names:
            stem = name[:-4]
            for sub, ext in (('images', '.jpg'), ('annotations', '.png')):
                with open(osp.join(a, sub, split, stem + ext), 'rb') as f1, \
                        open(osp.join(b, sub, split, stem + ext), 'rb') as f2:
                    assert f1.read() == f2.read()
            label = cv2.imread(osp.join(a, 'annotations', split, stem + '.png'),
                               cv2.IMREAD_UNCHANGED)
            img = cv2.imread(osp.join(a, 'images', split, name))
            assert label.dtype == np.uint8 and label.shape == (48, 48) == img.shape[:2]
            assert set(np.unique(label)) <= {0, 1, 2, 3} and 0 in label and label.max() >= 1


def test_quickstart_train_test_tta(tmp_path, tiny_data):
    config = tiny_seg_config(
        tmp_path, tiny_data, train_cfg=dict(max_iters=1, val_interval=1),
        default_hooks=dict(logger=dict(interval=1), checkpoint=dict(interval=1)))
    work_dir = str(tmp_path / 'work')
    load_tool('train').main([config, '--work-dir', work_dir])
    ckpt = osp.join(work_dir, 'iter_1.pth')
    assert osp.isfile(ckpt)
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        assert f.read().strip() == ckpt
    state = torch.load(ckpt, map_location='cpu', weights_only=False)
    assert state['meta']['iter'] == 1
    assert any(k.startswith('backbone.') for k in state['state_dict'])

    # a CLI run: MMSegmentation's visualizer has a fixed instance name, so in one process a second
    # Runner would reuse the first one's (and its save_dir)
    show_dir = str(tmp_path / 'show')
    proc = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'test.py'), config, ckpt, '--work-dir',
         str(tmp_path / 'test'), '--show-dir', show_dir, '--out', str(tmp_path / 'out.pkl')],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'mIoU' in proc.stdout + proc.stderr
    pngs = glob.glob(osp.join(show_dir, '**', '*.png'), recursive=True)
    assert len(pngs) == 2, pngs
    assert osp.getsize(str(tmp_path / 'out.pkl')) > 0

    test_tool = load_tool('test')
    label_dir = tmp_path / 'label_maps'
    tta_metrics = test_tool.main([config, ckpt, '--tta', '--work-dir', str(tmp_path / 'tta'),
                                  '--out', str(label_dir)])
    assert set(tta_metrics) >= {'mIoU', 'aAcc', 'mAcc'} and 0 <= tta_metrics['mIoU'] <= 100
    # --out DIR: one PNG label map per image, in the annotations' values (reduce_zero_label:
    # the classes are 1..3, 0 is "other"); the mIoU recomputed from them is the tool's
    assert_label_maps_give_miou(label_dir, osp.join(tiny_data, 'annotations', 'validation'),
                                num_classes=3, miou=tta_metrics['mIoU'])
    not_a_dir = tmp_path / 'labels.txt'
    not_a_dir.write_text('x')
    with pytest.raises(ValueError, match='existing file'):
        test_tool.main([config, ckpt, '--out', str(not_a_dir)])


def assert_label_maps_give_miou(label_dir, gt_dir, num_classes, miou):
    import cv2
    import numpy as np
    names = sorted(os.listdir(gt_dir))
    assert sorted(os.listdir(label_dir)) == names
    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    for name in names:
        pred = cv2.imread(osp.join(label_dir, name), cv2.IMREAD_UNCHANGED)
        gt = cv2.imread(osp.join(gt_dir, name), cv2.IMREAD_UNCHANGED)
        assert pred.dtype == np.uint8 and pred.shape == gt.shape, (pred.shape, gt.shape)
        assert 1 <= pred.min() and pred.max() <= num_classes, np.unique(pred)
        valid = gt > 0  # 0 is ignored (reduce_zero_label)
        p, g = pred[valid].astype(int) - 1, gt[valid].astype(int) - 1
        for c in range(num_classes):
            inter[c] += np.sum((p == c) & (g == c))
            union[c] += np.sum((p == c) | (g == c))
    with np.errstate(invalid='ignore', divide='ignore'):
        expected = 100 * np.nanmean(inter / union)
    # the tool rounds its metrics to 2 decimals
    assert abs(expected - miou) <= 0.006, (expected, miou)


# -- from an existing MMSegmentation project: MMSegmentation's own tools/train.py ---------------
def test_mmseg_own_train_tool_on_example_config(tmp_path, tiny_data):
    import mmseg
    mmseg_train = osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools', 'train.py')
    assert osp.isfile(mmseg_train), mmseg_train
    cfg = Config.fromfile(EXAMPLE)
    assert cfg.model.backbone.type == 'UniRepLKNet' and cfg.model.pretrained is None
    pipeline = """[
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomCrop', crop_size=(64, 64)),
    dict(type='PackSegInputs')]"""
    config = tmp_path / 'tiny_example.py'
    config.write_text(f"""_base_ = [{EXAMPLE!r}]
model = dict(
    data_preprocessor=dict(size=(64, 64)),
    backbone=dict(arch='a', init_cfg=None),
    decode_head=dict(in_channels=320, channels=16, num_classes=3),
    auxiliary_head=dict(in_channels=160, channels=16, num_classes=3))
loader = dict(num_workers=0, persistent_workers=False)
train_dataloader = dict(batch_size=2, **loader, dataset=dict(
    type='BaseSegDataset', img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=True,
    metainfo=dict(classes=('a', 'b', 'c'), palette=[[1, 1, 1], [2, 2, 2], [3, 3, 3]]),
    data_root={tiny_data!r}, pipeline={pipeline}))
val_dataloader = dict(**loader, dataset=dict(data_root={tiny_data!r}))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=1, val_interval=100)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1))
""")
    work_dir = tmp_path / 'work'
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    proc = subprocess.run([sys.executable, mmseg_train, str(config), '--work-dir', str(work_dir)],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (work_dir / 'iter_1.pth').is_file(), os.listdir(work_dir)
    state = torch.load(str(work_dir / 'iter_1.pth'), map_location='cpu', weights_only=False)
    keys = state['state_dict']
    assert 'backbone.stages.2.5.dwconv.lk_origin.weight' in keys  # our backbone, arch 'a'
    assert keys['decode_head.conv_seg.weight'].shape[:2] == (3, 16)


# -- tools/get_flops.py ---------------------------------------------------------------------------
def test_get_flops_segmentor(tmp_path, tiny_data):
    get_flops = load_tool('get_flops')
    res = get_flops.main([QUICKSTART, '--shape', '64', '96', '--json'])
    model = build_segmentor(Config.fromfile(QUICKSTART))
    assert res['framework'] == 'mmseg' and res['input_shape'] == (64, 96)
    assert res['params'] == n_params(model) - n_params(model.auxiliary_head)
    assert res['aux_head_params'] == n_params(model.auxiliary_head)
    assert res['backbone_params'] == n_params(model.backbone)
    assert res['flops'] > 0
    dep = get_flops.get_flops(QUICKSTART, (64, 96), deploy=True)
    assert dep['params'] < res['params'] and 0.9 * res['flops'] < dep['flops'] < res['flops']
    # a config that compiles its backbone is counted as the eager one (a compiled forward cannot
    # be traced)
    compiled = get_flops.get_flops(QUICKSTART, (64, 96), {'model.backbone.compile': True})
    assert (compiled['params'], compiled['flops']) == (res['params'], res['flops'])


def test_get_flops_detector():
    get_flops = load_tool('get_flops')
    config = osp.join(ROOT, 'configs', 'detection', 'unireplknet_t_1k_cascade_3x.py')
    res = get_flops.main([config, '--shape', '96', '128', '--json', '--num-proposals', '8',
                          '--num-mask-rois', '4', '--cfg-options', 'model.backbone.arch=a',
                          'model.neck.in_channels=[40,80,160,320]'])
    assert res['framework'] == 'mmdet' and res['input_shape'] == (96, 128)
    assert res['counted'] == ('backbone + neck + RPN head + RoI heads on 8 proposals '
                              '(masks on 4)')
    assert res['flops'] > 0 and res['params'] > res['backbone_params'] > 0


def test_get_flops_counts_the_large_kernel_op_like_conv2d(monkeypatch):
    """With use_lk_op=True the tool counts the model with nn.Conv2d in the op's place (the op's
    CUDA path is opaque to the tracer): the same parameters and FLOPs as without the op."""
    from mmunirep.ops import DepthWiseConv2dImplicitGEMM
    get_flops = load_tool('get_flops')
    built = []
    build = get_flops.build_model
    monkeypatch.setattr(get_flops, 'build_model', lambda cfg: built.append(build(cfg)) or built[-1])
    plain = get_flops.get_flops(QUICKSTART, (64, 64))
    with_op = get_flops.get_flops(QUICKSTART, (64, 64),
                                  cfg_options={'model.backbone.use_lk_op': True})
    assert len(built) == 2
    assert not any(isinstance(m, DepthWiseConv2dImplicitGEMM) for m in built[1].modules())
    assert with_op['flops'] == plain['flops'] and with_op['params'] == plain['params']
    # on its traceable path (the CPU fallback) the op counts as the convolution it computes
    from mmengine.analysis import FlopAnalyzer
    x = torch.randn(1, 3, 64, 64)
    counts = [FlopAnalyzer(UniRepLKNet(arch='a', use_lk_op=op).eval(), (x, )).total()
              for op in (False, True)]
    assert counts[0] == counts[1] > 0, counts
