"""Fixtures shared across the test folders: the emulated CUDA kernels, the generated datasets and
the small quick-start models trained on them, each built once per session."""

import os
import os.path as osp

import pytest
import torch

from helpers import (
    ROOT,
    load_tool,
    tiny_det_config,
    tiny_dino_config,
    tiny_seg_config,
    visualizers_isolated,
)


def pytest_collection_modifyitems(config, items):
    """The ``sass`` tests are opt-in: they run only when ``-m`` names them. The ``slow`` tests
    run first, so that with pytest-xdist the long ones do not end up last on one worker."""
    if 'sass' not in (config.getoption('markexpr') or ''):
        keep = [item for item in items if item.get_closest_marker('sass') is None]
        if len(keep) != len(items):
            config.hook.pytest_deselected(items=[i for i in items if i not in keep])
            items[:] = keep
    items.sort(key=lambda item: item.get_closest_marker('slow') is None)


def pytest_configure(config):
    """pytest-xdist's workers share the machine's cores: one torch thread each."""
    if os.environ.get('PYTEST_XDIST_WORKER'):
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _own_visualizers():
    """Each test starts without mmengine's process-wide visualizers and leaves them as it found
    them, so that a runner never takes another test's (or a session fixture's) visualizer."""
    with visualizers_isolated():
        yield


OPS_CSRC = osp.join(ROOT, 'mmunirep', 'ops', 'csrc')
EMULATOR_CSRC = osp.join(ROOT, 'tests', 'test_ops', 'csrc')
CLASSES = ('circle', 'square', 'triangle')
PALETTE = [[220, 20, 60], [0, 170, 0], [30, 60, 255]]
# the segmentation quick start's classes: label 0 of the shapes' maps is the background class
SEG_CLASSES = ('background',) + CLASSES
SEG_PALETTE = [[0, 0, 0]] + PALETTE


@pytest.fixture(scope='session')
def emu():
    """The op's CUDA kernels compiled for the CPU against the CUDA emulator (~30 s the first
    time; torch caches the build in ~/.cache/torch_extensions)."""
    from torch.utils.cpp_extension import load

    return load(
        'mmunirep_dwconv_emulated',
        [osp.join(EMULATOR_CSRC, 'depthwise_conv_emulated.cpp')],
        extra_include_paths=[EMULATOR_CSRC, osp.join(OPS_CSRC, 'common', 'cuda')],
        extra_cflags=['-O1', '-std=c++20', '-Wno-unknown-pragmas'],
    )


@pytest.fixture
def emulated_ext(emu, monkeypatch):
    """Route mmunirep.ops' calls into the extension through the emulated kernels."""
    from mmunirep.ops import depthwise_conv

    monkeypatch.setattr(depthwise_conv, '_ext', emu)
    return emu


@pytest.fixture(scope='session')
def shapes_coco(tmp_path_factory):
    """A COCO-format instance segmentation dataset of 4 + 2 generated 96x96 images."""
    root = tmp_path_factory.mktemp('shapes_coco')
    load_tool('make_shapes_coco').main(
        ['--out', str(root), '--num-train', '4', '--num-val', '2', '--size', '96', '--seed', '1']
    )
    return str(root)


@pytest.fixture(scope='session')
def shapes_ade(tmp_path_factory):
    """An ADE20K-format semantic segmentation dataset of 4 + 2 generated 64x64 images."""
    root = str(tmp_path_factory.mktemp('shapes_ade'))
    counts = load_tool('make_shapes_ade20k').generate(root, num_train=4, num_val=2, size=64, seed=3)
    assert counts == dict(training=4, validation=2)
    return root


def _save(model, path, classes=CLASSES, palette=PALETTE):
    torch.save(
        {
            'meta': {'dataset_meta': {'classes': classes, 'palette': palette}},
            'state_dict': model.state_dict(),
        },
        path,
    )
    return str(path)


def _random_model(config: str, path, *meta) -> str:
    """A checkpoint at ``path`` of ``config``'s model with random weights, random BatchNorm
    statistics, GRN and layer scales in the backbone (so that re-parameterization must fold them
    all)."""
    from mmengine.config import Config

    from mmunirep.utils import build_model

    from helpers import randomize

    torch.manual_seed(0)
    model = build_model(Config.fromfile(config))
    model.init_weights()
    randomize(model.backbone)
    return _save(model, path, *meta)


@pytest.fixture(scope='session')
def seg_model(shapes_ade, tmp_path_factory):
    """The segmentation quick start's model on ``shapes_ade``: its config, and a checkpoint of
    random weights (:func:`_random_model`)."""
    tmp = tmp_path_factory.mktemp('seg_model')
    config = tiny_seg_config(tmp, shapes_ade)
    ckpt = _random_model(config, tmp / 'seg.pth', SEG_CLASSES, SEG_PALETTE)
    return dict(tmp=tmp, data=shapes_ade, config=config, ckpt=ckpt)


@pytest.fixture(scope='session')
def det_model(shapes_coco, tmp_path_factory):
    """The detection quick start's model on ``shapes_coco``, as :func:`seg_model`."""
    tmp = tmp_path_factory.mktemp('det_model')
    config = tiny_det_config(tmp, shapes_coco)
    ckpt = _random_model(config, tmp / 'det.pth')
    return dict(tmp=tmp, data=shapes_coco, config=config, ckpt=ckpt)


@pytest.fixture(scope='session')
def dino_model(shapes_coco, tmp_path_factory):
    """A shrunk DINO (:func:`helpers.tiny_dino_config`) on ``shapes_coco``, as :func:`seg_model`."""
    tmp = tmp_path_factory.mktemp('dino_model')
    config = tiny_dino_config(tmp, shapes_coco)
    ckpt = _random_model(config, tmp / 'dino.pth')
    return dict(tmp=tmp, data=shapes_coco, config=config, ckpt=ckpt)


@pytest.fixture(scope='session')
def trained_det(tmp_path_factory):
    """The detection quick start trained for 60 iterations on 40 generated images (about half a
    minute on 2 cores): a detector whose boxes mean something (bbox mAP about 0.2 on its 8
    validation images), for the tests that compare predictions."""
    tmp = tmp_path_factory.mktemp('trained_det')
    data = str(tmp / 'data')
    load_tool('make_shapes_coco').main(
        ['--out', data, '--num-train', '40', '--num-val', '8', '--size', '128', '--seed', '5']
    )
    config = tiny_det_config(tmp, data)
    epochs = 6
    load_tool('train').main(
        [
            config,
            '--work-dir',
            str(tmp / 'work'),
            '--cfg-options',
            'train_dataloader.batch_size=4',
            f'train_cfg.max_epochs={epochs}',
            f'train_cfg.val_begin={epochs + 1}',  # no validation: the tests score it
            'param_scheduler.0.end=10',
            f'param_scheduler.1.T_max={epochs}',
            f'param_scheduler.1.end={epochs}',
            f'default_hooks.checkpoint.interval={epochs}',
            'randomness.seed=0',
        ]
    )
    return dict(config=config, data=data, ckpt=str(tmp / 'work' / f'epoch_{epochs}.pth'))
