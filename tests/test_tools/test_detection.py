"""Detection through the tools: train / test / resume with tools/train.py and tools/test.py, and
use from an existing MMDetection project with MMDetection's own tools/train.py.

CPU only; the training tests use a tiny generated shapes dataset and a quick-start-sized model.
"""

import copy
import glob
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

import mmunirep  # noqa: F401  (registers UniRepLKNet)
from mmunirep.models import UniRepLKNet

from helpers import ROOT, coco_stats, ground_truth_from_predictions
from helpers import load_tool as _load_tool

pytestmark = pytest.mark.slow  # trains detectors

QUICKSTART = osp.join(ROOT, 'configs', 'detection', 'quickstart_unireplknet_a_shapes.py')
MMDET_PROJECT = osp.join(ROOT, 'configs', 'detection', 'example_mmdet_project_mask_rcnn.py')
CLASSES = ('circle', 'square', 'triangle')


# ------------------------------------------------------------------------------------------------
# train / test / resume with tools/train.py and tools/test.py
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def shapes(shapes_coco):
    return shapes_coco


def _data_options(root):
    ann_val = osp.join(root, 'annotations', 'instances_val.json')
    opts = {
        'train_dataloader.dataset.data_root': root + '/',
        'val_dataloader.dataset.data_root': root + '/',
        'test_dataloader.dataset.data_root': root + '/',
        'val_evaluator.ann_file': ann_val,
        'test_evaluator.ann_file': ann_val,
    }
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        opts[f'{loader}.batch_size'] = 2
        opts[f'{loader}.num_workers'] = 0
    return opts


def _quick_options(root, max_epochs, val_interval):
    opts = _data_options(root)
    opts.update(
        {
            'train_cfg.max_epochs': max_epochs,
            'train_cfg.val_interval': val_interval,
            'default_hooks.checkpoint.interval': 1,
            'default_hooks.checkpoint.max_keep_ckpts': -1,
            'default_hooks.logger.interval': 1,
            'randomness.seed': 0,
        }
    )
    return opts


def _to_argv(opts):
    return ['--cfg-options'] + [f'{k}={v}' for k, v in opts.items()]


def _load_ckpt(path):
    return torch.load(path, map_location='cpu', weights_only=False)


@pytest.fixture(scope='module')
def trained(shapes, tmp_path_factory):
    """One epoch (2 iterations of 2 images) + validation with tools/train.py."""
    work_dir = str(tmp_path_factory.mktemp('quick_train'))
    _load_tool('train').main(
        [QUICKSTART, '--work-dir', work_dir]
        + _to_argv(_quick_options(shapes, max_epochs=1, val_interval=1))
    )
    return work_dir


def test_train_one_epoch_and_validate(trained):
    ckpt_path = osp.join(trained, 'epoch_1.pth')
    assert osp.isfile(ckpt_path)
    ckpt = _load_ckpt(ckpt_path)
    assert ckpt['meta']['epoch'] == 1 and ckpt['meta']['iter'] == 2
    # the validation at the end of the epoch ran and logged the COCO metrics
    # (the run's log file: the visualizer, and so vis_data/scalars.json, is a process-wide
    # instance that an earlier test in the same session may have created with another save_dir)
    logs = glob.glob(osp.join(trained, '*', '*.log'))
    assert logs, 'no log file in the work dir'
    with open(logs[0]) as f:
        text = f.read()
    assert 'coco/bbox_mAP' in text and 'coco/segm_mAP' in text


def test_test_tool_evaluates_checkpoint(shapes, trained, tmp_path):
    out = tmp_path / 'preds.pkl'
    show = tmp_path / 'vis'
    ckpt = osp.join(trained, 'epoch_1.pth')
    # the untrained mask head's probabilities are all below the usual 0.5: at 0 its masks are
    # its boxes' rectangles, not empty, so that the masks' evaluation below is not vacuous
    data_options = dict(_data_options(shapes), **{'model.test_cfg.rcnn.mask_thr_binary': 0.0})
    metrics = _load_tool('test').main(
        [
            QUICKSTART,
            ckpt,
            '--work-dir',
            str(tmp_path / 'test'),
            '--out',
            str(out),
            '--show-dir',
            str(show),
        ]
        + _to_argv(data_options)
    )
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'):
        assert key in metrics, sorted(metrics)
    pngs = sorted(os.listdir(show))
    assert pngs == ['00000.png', '00001.png'], pngs
    ann_file = osp.join(shapes, 'annotations', 'instances_val.json')
    for iou_type in ('bbox', 'segm'):
        stats = coco_stats(out, ann_file, iou_type)
        assert abs(metrics[f'coco/{iou_type}_mAP'] - stats['mAP']) <= 6e-4, iou_type

    # After two training iterations every metric is 0 (the boxes hardly overlap the objects),
    # which a wrong evaluation would give too. So the same checkpoint is evaluated again against
    # ground truth made of its own 3 best boxes and masks per image: the tool's metrics are then
    # far from 0, and pycocotools on its dumped predictions must give them.
    own_gt = tmp_path / 'own_gt.json'
    ground_truth_from_predictions(out, ann_file, own_gt, masks=True, per_image=3)
    out2 = tmp_path / 'preds2.pkl'
    options = dict(
        data_options,
        **{'test_dataloader.dataset.ann_file': str(own_gt), 'test_evaluator.ann_file': str(own_gt)},
    )
    metrics = _load_tool('test').main(
        [QUICKSTART, ckpt, '--work-dir', str(tmp_path / 'test2'), '--out', str(out2)]
        + _to_argv(options)
    )
    for iou_type in ('bbox', 'segm'):
        stats = coco_stats(out2, str(own_gt), iou_type)
        for name in ('mAP', 'mAP_50'):
            key = f'coco/{iou_type}_{name}'
            # the tool rounds to 3 decimals
            assert abs(metrics[key] - stats[name]) <= 6e-4, (key, metrics[key], stats[name])
    assert metrics['coco/bbox_mAP'] > 0.3 and metrics['coco/segm_mAP'] > 0.3, metrics


def test_train_with_the_backbone_compiled_and_ema(shapes, tmp_path):
    """model.backbone.compile through tools/train.py, with the IN-22K recipe's EMA hook (which
    deepcopies the model): the backbone goes through torch.compile (torch's aot_eager here:
    Inductor would take minutes on 2 cores), training and validation run, and the checkpoint
    holds the eager backbone's keys for both the model and its EMA copy."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    config = tmp_path / 'compiled_backbone.py'
    config.write_text(
        f'_base_ = [{QUICKSTART!r}]\n'
        "model = dict(backbone=dict(compile=dict(backend='aot_eager'), arch=dict(\n"
        '    _delete_=True, depths=(1, 1, 2, 1), dims=(40, 80, 160, 320),\n'
        '    kernel_sizes=((3, ), (13, ), (13, 3), (13, )))))\n'
        "custom_hooks = [dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=1e-4, "
        'gamma=2000, update_buffers=True, priority=49)]\n'
    )
    work_dir = tmp_path / 'work'
    _load_tool('train').main(
        [str(config), '--work-dir', str(work_dir)]
        + _to_argv(_quick_options(shapes, max_epochs=1, val_interval=1))
    )
    assert torch._dynamo.utils.counters['stats']['unique_graphs'] > 0
    ckpt = _load_ckpt(osp.join(work_dir, 'epoch_1.pth'))
    eager = UniRepLKNet(
        **{
            k: v
            for k, v in Config.fromfile(str(config)).model.backbone.items()
            if k not in ('type', 'init_cfg', 'compile')
        }
    )
    keys = {k[len('backbone.') :] for k in ckpt['state_dict'] if k.startswith('backbone.')}
    assert keys == set(eager.state_dict())
    # mmengine's EMAHook saves the averaged model's state dict (keys module.*) beside the model's
    ema_keys = {
        k[len('module.backbone.') :]
        for k in ckpt['ema_state_dict']
        if k.startswith('module.backbone.')
    }
    assert ema_keys == set(eager.state_dict())


def test_test_tool_tta_on_a_detection_config_says_why_not(shapes, trained, tmp_path):
    with pytest.raises(
        ValueError,
        match=r'--tta needs tta_model and tta_pipeline in the config '
        r'\(the detection configs have none: .*instance masks',
    ):
        _load_tool('test').main(
            [
                QUICKSTART,
                osp.join(trained, 'epoch_1.pth'),
                '--tta',
                '--work-dir',
                str(tmp_path / 'test'),
            ]
            + _to_argv(_data_options(shapes))
        )


def test_resume_restores_iteration_and_optimizer(shapes, trained, tmp_path, monkeypatch):
    """tools/train.py --resume: the Runner's state right after resuming equals the checkpoint,
    and training continues with epoch 2 only."""
    ckpt_path = osp.join(trained, 'epoch_1.pth')
    saved = _load_ckpt(ckpt_path)
    captured = {}
    load_or_resume = Runner.load_or_resume

    def spy(runner):  # Runner.train() calls this once its optimizer and schedulers exist
        load_or_resume(runner)
        captured['epoch'], captured['iter'] = runner.epoch, runner.iter
        captured['optimizer'] = copy.deepcopy(runner.optim_wrapper.optimizer.state_dict())
        captured['model'] = copy.deepcopy(runner.model.state_dict())

    monkeypatch.setattr(Runner, 'load_or_resume', spy)
    work_dir = str(tmp_path / 'resumed')
    _load_tool('train').main(
        [QUICKSTART, '--work-dir', work_dir, '--resume', ckpt_path]
        + _to_argv(_quick_options(shapes, max_epochs=2, val_interval=10))
    )

    assert captured['epoch'] == 1 and captured['iter'] == 2
    state, saved_state = captured['optimizer']['state'], saved['optimizer']['state']
    assert len(state) == len(saved_state) > 0
    n_moving = 0
    for k, s in saved_state.items():
        for buf in ('exp_avg', 'exp_avg_sq', 'step'):
            assert torch.equal(state[k][buf], s[buf]), (k, buf)  # exact (tolerance 0)
        n_moving += int(s['exp_avg'].abs().sum() > 0)
    assert n_moving > 0.5 * len(saved_state)  # there really was a state to restore
    groups, saved_groups = captured['optimizer']['param_groups'], saved['optimizer']['param_groups']
    assert len(groups) == len(saved_groups)
    for group, saved_group in zip(groups, saved_groups):
        assert group['lr'] == pytest.approx(saved_group['lr'], rel=1e-12, abs=0)
    for k, v in saved['state_dict'].items():
        assert torch.equal(captured['model'][k], v), k

    # training went on with epoch 2 only (a fresh start would have saved epoch_1 here too)
    assert not osp.exists(osp.join(work_dir, 'epoch_1.pth'))
    final = _load_ckpt(osp.join(work_dir, 'epoch_2.pth'))
    assert final['meta']['epoch'] == 2 and final['meta']['iter'] == 4


# ------------------------------------------------------------------------------------------------
# from an existing MMDetection project: MMDetection's own tools/train.py
# ------------------------------------------------------------------------------------------------
def _mmdet_train_script():
    import mmdet

    candidates = [
        osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'train.py'),
        osp.join(osp.dirname(osp.dirname(mmdet.__file__)), 'tools', 'train.py'),
    ]
    for path in candidates:
        if osp.isfile(path):
            return path
    pytest.fail(f"MMDetection's tools/train.py not found in {candidates}")


def test_mmdet_own_train_tool_on_project_config(shapes, tmp_path):
    script = _mmdet_train_script()
    work_dir = tmp_path / 'mmdet_project'
    classes = '(' + ','.join(CLASSES) + ')'
    opts = {
        # test-sized: UniRepLKNet-A, no pretrained download, small images
        'model.backbone.arch': 'a',
        'model.backbone.init_cfg': 'None',
        'model.neck.in_channels': '[40,80,160,320]',
        'model.roi_head.bbox_head.num_classes': 3,
        'model.roi_head.mask_head.num_classes': 3,
        'train_dataloader.batch_size': 4,  # the 4 images: one iteration
        'train_dataloader.num_workers': 0,
        'train_dataloader.persistent_workers': False,
        'train_dataloader.dataset.data_root': shapes + '/',
        'train_dataloader.dataset.ann_file': 'annotations/instances_train.json',
        'train_dataloader.dataset.data_prefix.img': 'train/',
        'train_dataloader.dataset.metainfo.classes': classes,
        'train_dataloader.dataset.pipeline.2.scale': '(96,96)',
        # fewer proposals and RoIs than the 1x recipe (2000 / 512): CPU time
        'model.train_cfg.rpn_proposal.max_per_img': 100,
        'model.train_cfg.rcnn.sampler.num': 64,
        # one training iteration (4 images, batch 4), no validation
        'train_cfg.max_epochs': 1,
        'val_cfg': 'None',
        'val_dataloader': 'None',
        'val_evaluator': 'None',
        'default_hooks.logger.interval': 1,
    }
    cmd = [sys.executable, script, MMDET_PROJECT, '--work-dir', str(work_dir), '--cfg-options'] + [
        f'{k}={v}' for k, v in opts.items()
    ]
    proc = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ckpt_path = work_dir / 'epoch_1.pth'
    assert ckpt_path.is_file(), os.listdir(work_dir)
    ckpt = _load_ckpt(str(ckpt_path))
    assert ckpt['meta']['iter'] == 1 and ckpt['meta']['epoch'] == 1
    assert any(k.startswith('backbone.stages.') for k in ckpt['state_dict'])
    assert ckpt['state_dict']['backbone.downsample_layers.0.0.weight'].shape[0] == 20  # arch a
