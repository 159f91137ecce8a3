"""Segmentation through the tools: the quick start's training and tools/test.py (--tta, --out,
--show-dir), the shapes generator, and MMSegmentation's own tools/train.py on a config that swaps
in our backbone (CPU, tiny data)."""

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

from helpers import ROOT, load_tool, tiny_seg_config

SEG_DIR = osp.join(ROOT, 'configs', 'segmentation')
QUICKSTART = osp.join(SEG_DIR, 'quickstart_unireplknet_a_shapes.py')
EXAMPLE = osp.join(SEG_DIR, 'example_mmseg_project_fcn.py')
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


# -- the quick start on tiny data: tools/train.py, tools/test.py (+ --tta, --show-dir) ----------
@pytest.fixture(scope='module')
def tiny_data(shapes_ade):
    return shapes_ade


def test_make_shapes_is_deterministic_and_ade_formatted(tmp_path):
    import cv2
    import numpy as np

    a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
    for out in (a, b):
        make_shapes.main(
            ['--out', out, '--num-train', '3', '--num-val', '2', '--size', '48', '--seed', '7']
        )
    for split, prefix, n in (('training', 'train', 3), ('validation', 'val', 2)):
        names = sorted(os.listdir(osp.join(a, 'images', split)))
        assert names == [f'ADE_{prefix}_{i:08d}.jpg' for i in range(n)]
        for name in names:
            stem = name[:-4]
            for sub, ext in (('images', '.jpg'), ('annotations', '.png')):
                with open(osp.join(a, sub, split, stem + ext), 'rb') as f1, open(
                    osp.join(b, sub, split, stem + ext), 'rb'
                ) as f2:
                    assert f1.read() == f2.read()
            label = cv2.imread(
                osp.join(a, 'annotations', split, stem + '.png'), cv2.IMREAD_UNCHANGED
            )
            img = cv2.imread(osp.join(a, 'images', split, name))
            assert label.dtype == np.uint8 and label.shape == (48, 48) == img.shape[:2]
            assert set(np.unique(label)) <= {0, 1, 2, 3} and 0 in label and label.max() >= 1


@pytest.mark.slow
def test_quickstart_train_test_tta(tmp_path, tiny_data):
    config = tiny_seg_config(
        tmp_path,
        tiny_data,
        train_cfg=dict(max_iters=1, val_interval=1),
        default_hooks=dict(logger=dict(interval=1), checkpoint=dict(interval=1)),
    )
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
        [
            sys.executable,
            osp.join(ROOT, 'tools', 'test.py'),
            config,
            ckpt,
            '--work-dir',
            str(tmp_path / 'test'),
            '--show-dir',
            show_dir,
            '--out',
            str(tmp_path / 'out.pkl'),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'mIoU' in proc.stdout + proc.stderr
    pngs = glob.glob(osp.join(show_dir, '**', '*.png'), recursive=True)
    assert len(pngs) == 2, pngs
    assert osp.getsize(str(tmp_path / 'out.pkl')) > 0

    test_tool = load_tool('test')
    label_dir = tmp_path / 'label_maps'
    tta_metrics = test_tool.main(
        [config, ckpt, '--tta', '--work-dir', str(tmp_path / 'tta'), '--out', str(label_dir)]
    )
    assert set(tta_metrics) >= {'mIoU', 'aAcc', 'mAcc'} and 0 <= tta_metrics['mIoU'] <= 100
    # --out DIR: one PNG label map per image, in the annotations' values (the quick start's
    # 4 classes: 0 is the background class); the mIoU recomputed from them is the tool's
    assert_label_maps_give_miou(
        label_dir,
        osp.join(tiny_data, 'annotations', 'validation'),
        num_classes=4,
        miou=tta_metrics['mIoU'],
    )
    not_a_dir = tmp_path / 'labels.txt'
    not_a_dir.write_text('x')
    with pytest.raises(ValueError, match='existing file'):
        test_tool.main([config, ckpt, '--out', str(not_a_dir)])


def assert_label_maps_give_miou(label_dir, gt_dir, num_classes, miou, reduce_zero_label=False):
    """The label maps in ``label_dir`` (values as the annotations': 1..N with
    ``reduce_zero_label``, where 0 is ignored; else 0..N-1) give ``miou`` against ``gt_dir``."""
    import cv2
    import numpy as np

    names = sorted(os.listdir(gt_dir))
    assert sorted(os.listdir(label_dir)) == names
    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    for name in names:
        pred = cv2.imread(osp.join(label_dir, name), cv2.IMREAD_UNCHANGED)
        gt = cv2.imread(osp.join(gt_dir, name), cv2.IMREAD_UNCHANGED)
        assert pred.dtype == np.uint8 and pred.shape == gt.shape, (pred.shape, gt.shape)
        first = 1 if reduce_zero_label else 0
        assert first <= pred.min() and pred.max() < first + num_classes, np.unique(pred)
        valid = (gt >= first) & (gt != 255)  # 255, and with reduce_zero_label 0, ignored
        p, g = pred[valid].astype(int) - first, gt[valid].astype(int) - first
        for c in range(num_classes):
            inter[c] += np.sum((p == c) & (g == c))
            union[c] += np.sum((p == c) | (g == c))
    with np.errstate(invalid='ignore', divide='ignore'):
        expected = 100 * np.nanmean(inter / union)
    # the tool rounds its metrics to 2 decimals
    assert abs(expected - miou) <= 0.006, (expected, miou)


# -- from an existing MMSegmentation project: MMSegmentation's own tools/train.py ---------------
@pytest.mark.slow
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
    proc = subprocess.run(
        [sys.executable, mmseg_train, str(config), '--work-dir', str(work_dir)],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (work_dir / 'iter_1.pth').is_file(), os.listdir(work_dir)
    state = torch.load(str(work_dir / 'iter_1.pth'), map_location='cpu', weights_only=False)
    keys = state['state_dict']
    assert 'backbone.stages.2.5.dwconv.lk_origin.weight' in keys  # our backbone, arch 'a'
    assert keys['decode_head.conv_seg.weight'].shape[:2] == (3, 16)
