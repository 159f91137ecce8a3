"""The model zoo's recipes beyond the paper (Mask R-CNN, DINO, Mask2Former, UperNet on
Cityscapes) and the custom-dataset examples: each trains one iteration with tools/train.py and is
evaluated by tools/test.py on generated data, in-process; the metrics must be those recomputed
from the predictions the tool saves (--out).

Each config is loaded as it is, shrunk (``shrink``: every size in its pipelines and data
pre-processor divided by 8, a tiny backbone, few queries / proposals / layers, single-process
loaders of batch 2) and dumped, so that what runs is the config's own pipeline, model and
optimizer, only smaller. CPU only; a few seconds each.
"""

import os
import os.path as osp
import shutil

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config

import mmunirep  # noqa: F401

from helpers import ROOT, coco_stats, ground_truth_from_predictions, load_tool

pytestmark = pytest.mark.slow  # trains an iteration of each

DET = osp.join(ROOT, 'configs', 'detection')
SEG = osp.join(ROOT, 'configs', 'segmentation')
TINY_ARCH = dict(
    _delete_=True,
    depths=(1, 1, 2, 1),
    dims=(40, 80, 160, 320),
    kernel_sizes=((3,), (13,), (13, 3), (13,)),
)
DIMS = [40, 80, 160, 320]
SIZE_KEYS = ('scale', 'scales', 'crop_size', 'img_scale', 'size', 'max_size')


@pytest.fixture(autouse=True)
def unformatted_config_text(monkeypatch):
    """mmengine formats a config's text with yapf each time it dumps or logs it (5 times a tool
    run): 2 s each for these configs, most of a test's time. The text is the same Python
    unformatted."""
    import mmengine.config.config as config_module

    monkeypatch.setattr(config_module, 'FormatCode', lambda text, **kwargs: (text, False))


def shrink_sizes(value, factor):
    """A size (int, pair, list of either) divided by ``factor``, at least 16."""
    if isinstance(value, (list, tuple)):
        return type(value)(shrink_sizes(v, factor) for v in value)
    if isinstance(value, int):
        return max(16, value // factor)
    return value


def shrink_transforms(transforms, factor):
    """Every size of a pipeline (nested in RandomChoice / TestTimeAug too) divided by factor."""
    for t in transforms:
        if isinstance(t, (list, tuple)):
            shrink_transforms(t, factor)
            continue
        for key in SIZE_KEYS:
            if key in t:
                t[key] = shrink_sizes(t[key], factor)
        if 'transforms' in t:
            shrink_transforms(t['transforms'], factor)


def shrink(cfg: Config, factor: int = 8) -> Config:
    """The config at 1/factor of its image sizes, with a tiny backbone, single-process loaders
    of batch 2, a checkpoint after the first iteration and no validation during training."""
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dataset = cfg[loader].dataset
        while 'dataset' in dataset:  # dataset wrappers
            dataset = dataset.dataset
        shrink_transforms(dataset.pipeline, factor)
        cfg[loader].update(num_workers=0, persistent_workers=False)
        cfg[loader].batch_size = 2 if loader == 'train_dataloader' else 1
    pre = cfg.model.get('data_preprocessor', {})
    if pre.get('size'):
        pre['size'] = shrink_sizes(pre['size'], factor)
    cfg.merge_from_dict(
        {
            'model.backbone.arch': TINY_ARCH,
            'model.backbone.init_cfg': None,
            'model.backbone.with_cp': False,
            'randomness.seed': 0,
            'default_hooks.logger.interval': 1,
            'default_hooks.checkpoint.interval': 1,
            'default_hooks.checkpoint.save_best': None,
        }
    )
    # mmengine validates after the last iteration or epoch unless val_begin is beyond it: here
    # tools/test.py evaluates instead
    if cfg.train_cfg.type == 'IterBasedTrainLoop':
        cfg.train_cfg.update(max_iters=1, val_begin=2)
    else:
        cfg.train_cfg.update(max_epochs=1, val_begin=2)
        # one iteration of 2 images per epoch
        cfg.train_dataloader.dataset['indices'] = 2
    return cfg


def coco_data(cfg, root, classes=('circle', 'square', 'triangle')):
    """The COCO loaders and evaluators on the generated shapes (3 classes)."""
    root = root.rstrip('/') + '/'
    ann = dict(train='annotations/instances_train.json', val='annotations/instances_val.json')
    for loader, split in (('train', 'train'), ('val', 'val'), ('test', 'val')):
        dataset = cfg[f'{loader}_dataloader'].dataset
        dataset.update(
            data_root=root,
            ann_file=ann[split],
            data_prefix=dict(img=f'{split}/'),
            metainfo=dict(classes=classes),
        )
    for evaluator in ('val_evaluator', 'test_evaluator'):
        cfg[evaluator].ann_file = root + ann['val']


def ade_data(cfg, root, classes=('circle', 'square', 'triangle')):
    """The ADE20K-format loaders on the generated shapes (3 classes, label 0 ignored)."""
    for loader, split in (('train', 'training'), ('val', 'validation'), ('test', 'validation')):
        cfg[f'{loader}_dataloader'].dataset = dict(
            cfg[f'{loader}_dataloader'].dataset,
            type='BaseSegDataset',
            data_root=root,
            img_suffix='.jpg',
            seg_map_suffix='.png',
            reduce_zero_label=True,
            metainfo=dict(classes=classes),
            data_prefix=dict(img_path=f'images/{split}', seg_map_path=f'annotations/{split}'),
        )


def train_one_iteration(cfg: Config, tmp_path):
    """tools/train.py for the config's one iteration: (config file, checkpoint)."""
    config = str(tmp_path / 'shrunk.py')
    cfg.dump(config)
    work_dir = str(tmp_path / 'work')
    load_tool('train').main([config, '--work-dir', work_dir])
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        ckpt = f.read().strip()
    state = torch.load(ckpt, map_location='cpu', weights_only=False)
    assert state['meta']['iter'] == 1
    return config, ckpt


def check_det_tools(cfg: Config, tmp_path, data_root, masks):
    """tools/train.py for the config's one iteration, then tools/test.py with --out, twice: on the
    annotations, and on annotations made of the model's own 3 best predictions per image. After
    one iteration the metrics on the annotations are about 0, which a wrong evaluation would give
    too; on its own predictions they are far from 0. Each run's metrics must be pycocotools' on
    the predictions it dumped (:func:`det_checks`)."""
    if masks:
        # the untrained mask head's probabilities are all below the usual 0.5: at 0 its masks are
        # its boxes' rectangles, not empty, so that the masks' evaluation is not vacuous
        cfg.merge_from_dict({'model.test_cfg.rcnn.mask_thr_binary': 0.0})
    config, ckpt = train_one_iteration(cfg, tmp_path)
    ann_file = osp.join(data_root, 'annotations', 'instances_val.json')
    preds = str(tmp_path / 'preds.pkl')
    metrics = load_tool('test').main(
        [config, ckpt, '--work-dir', str(tmp_path / 'test'), '--out', preds]
    )
    det_checks(metrics, preds, ann_file, masks)
    own_gt = str(tmp_path / 'own_gt.json')
    ground_truth_from_predictions(preds, ann_file, own_gt, masks, per_image=3)
    preds = str(tmp_path / 'preds_own_gt.pkl')
    options = [
        f'{key}={own_gt}' for key in ('test_dataloader.dataset.ann_file', 'test_evaluator.ann_file')
    ]
    metrics = load_tool('test').main(
        [config, ckpt, '--work-dir', str(tmp_path / 'test_own_gt'), '--out', preds, '--cfg-options',
         *options]
    )  # fmt: skip
    det_checks(metrics, preds, own_gt, masks)
    for iou_type in ('bbox', 'segm') if masks else ('bbox',):
        assert metrics[f'coco/{iou_type}_mAP'] > 0.5, metrics


def det_checks(metrics, pred_file, ann_file, masks):
    """The tool's COCO metrics are pycocotools' on the predictions it dumped (--out), for the
    boxes and, with ``masks`` only, the masks."""
    assert ('coco/segm_mAP' in metrics) is masks, sorted(metrics)
    for iou_type in ('bbox', 'segm') if masks else ('bbox',):
        for name, value in coco_stats(pred_file, ann_file, iou_type).items():
            key = f'coco/{iou_type}_{name}'
            # CocoMetric rounds to 3 decimals
            assert abs(metrics[key] - value) <= 6e-4, (key, metrics[key], value)


def check_seg_tools(cfg: Config, tmp_path, ann_root, gt_maps, num_classes, reduce_zero_label):
    """tools/train.py for the config's one iteration, then tools/test.py with --out DIR, twice:
    on the annotations under ``ann_root`` (``gt_maps``: {label map name: annotation path under
    ann_root}), and on annotations that are the label maps of that first run, where mIoU and aAcc
    must be 100 (after one iteration the first metrics may be 0, which a wrong evaluation would
    give too). Each run's mIoU and aAcc must be those of the label maps it wrote
    (:func:`seg_checks`)."""
    config, ckpt = train_one_iteration(cfg, tmp_path)
    labels = tmp_path / 'labels'
    test = load_tool('test')
    metrics = test.main([config, ckpt, '--work-dir', str(tmp_path / 'test'), '--out', str(labels)])
    seg_checks(metrics, labels, ann_root, gt_maps, num_classes, reduce_zero_label)
    own_root = tmp_path / 'own_gt'
    for name, rel in gt_maps.items():
        os.makedirs(osp.dirname(own_root / rel), exist_ok=True)
        shutil.copy(labels / name, own_root / rel)
    labels = tmp_path / 'labels_own_gt'
    metrics = test.main(
        [config, ckpt, '--work-dir', str(tmp_path / 'test_own_gt'), '--out', str(labels),
         '--cfg-options', f'test_dataloader.dataset.data_prefix.seg_map_path={own_root}']
    )  # fmt: skip
    seg_checks(metrics, labels, own_root, gt_maps, num_classes, reduce_zero_label)
    assert metrics['mIoU'] == 100 and metrics['aAcc'] == 100, metrics


def seg_checks(metrics, label_dir, ann_root, gt_maps, num_classes, reduce_zero_label):
    """The tool's mIoU and aAcc are those of the label maps it wrote (--out DIR: one PNG per
    image, named as the image, in the annotations' values) against the annotations. With
    ``reduce_zero_label`` annotation 0 is ignored and the maps' values are 1..N."""
    assert sorted(os.listdir(label_dir)) == sorted(gt_maps)
    inter, union, gt_area = np.zeros(num_classes), np.zeros(num_classes), np.zeros(num_classes)
    first = 1 if reduce_zero_label else 0
    for name, rel in gt_maps.items():
        pred = cv2.imread(osp.join(label_dir, name), cv2.IMREAD_UNCHANGED).astype(int)
        gt = cv2.imread(osp.join(ann_root, rel), cv2.IMREAD_UNCHANGED).astype(int)
        assert pred.shape == gt.shape, (name, pred.shape, gt.shape)
        assert first <= pred.min() and pred.max() < first + num_classes, np.unique(pred)
        valid = (gt >= first) & (gt != 255)
        p, g = pred[valid] - first, gt[valid] - first
        for c in range(num_classes):
            inter[c] += np.sum((p == c) & (g == c))
            union[c] += np.sum((p == c) | (g == c))
            gt_area[c] += np.sum(g == c)
    assert gt_area.sum() > 0, 'no labelled pixels: nothing to evaluate'
    with np.errstate(invalid='ignore', divide='ignore'):
        miou = 100 * np.nanmean(inter / union)
    a_acc = 100 * inter.sum() / gt_area.sum()
    # IoUMetric rounds to 2 decimals
    assert abs(metrics['mIoU'] - miou) <= 0.006, (metrics['mIoU'], miou)
    assert abs(metrics['aAcc'] - a_acc) <= 0.006, (metrics['aAcc'], a_acc)


def ade_gt_maps(root):
    """(annotations folder, {label map name: annotation}) of the ADE20K-format shapes' validation
    images."""
    ann_root = osp.join(root, 'annotations', 'validation')
    return ann_root, {name: name for name in sorted(os.listdir(ann_root))}


# -- detection ----------------------------------------------------------------------------------
@pytest.mark.parametrize('name', ['unireplknet_t_1k_mask_rcnn_1x', 'unireplknet_s_1k_mask_rcnn_3x'])
def test_mask_rcnn(name, shapes_coco, tmp_path):
    cfg = shrink(Config.fromfile(osp.join(DET, name + '.py')))
    coco_data(cfg, shapes_coco)
    cfg.merge_from_dict(
        {
            'model.neck.in_channels': DIMS,
            'model.roi_head.bbox_head.num_classes': 3,
            'model.roi_head.mask_head.num_classes': 3,
            'model.train_cfg.rpn_proposal.max_per_img': 64,
            'model.train_cfg.rcnn.sampler.num': 32,
            'model.roi_head.bbox_head.fc_out_channels': 64,
            'model.roi_head.mask_head.num_convs': 1,
            'model.roi_head.mask_head.conv_out_channels': 32,
            'model.test_cfg.rpn.max_per_img': 50,
            'model.test_cfg.rcnn.max_per_img': 20,
        }
    )
    check_det_tools(cfg, tmp_path, shapes_coco, masks=True)


def test_dino(shapes_coco, tmp_path):
    cfg = shrink(Config.fromfile(osp.join(DET, 'unireplknet_b_22k_dino_12e.py')))
    coco_data(cfg, shapes_coco)
    cfg.merge_from_dict(
        {
            'model.neck.in_channels': DIMS,
            'model.num_queries': 30,
            'model.encoder.num_layers': 1,
            'model.decoder.num_layers': 2,
            'model.encoder.layer_cfg.ffn_cfg.feedforward_channels': 64,
            'model.decoder.layer_cfg.ffn_cfg.feedforward_channels': 64,
            'model.bbox_head.num_classes': 3,
            'model.dn_cfg.group_cfg.num_dn_queries': 10,
            'model.test_cfg.max_per_img': 20,
        }
    )
    check_det_tools(cfg, tmp_path, shapes_coco, masks=False)


# -- segmentation -------------------------------------------------------------------------------
def test_mask2former(shapes_ade, tmp_path):
    cfg = shrink(Config.fromfile(osp.join(SEG, 'unireplknet_b_22k_mask2former_160k_640.py')))
    ade_data(cfg, shapes_ade)
    cfg.merge_from_dict(
        {
            'model.decode_head.in_channels': DIMS,
            'model.decode_head.num_classes': 3,
            'model.decode_head.num_queries': 10,
            'model.decode_head.loss_cls.class_weight': [1.0] * 3 + [0.1],
            'model.decode_head.pixel_decoder.encoder.num_layers': 1,
            'model.decode_head.pixel_decoder.encoder.layer_cfg.ffn_cfg.feedforward_channels': 64,
            'model.decode_head.transformer_decoder.num_layers': 3,
            'model.decode_head.transformer_decoder.layer_cfg.ffn_cfg.feedforward_channels': 64,
            'model.decode_head.train_cfg.num_points': 256,
        }
    )
    check_seg_tools(cfg, tmp_path, *ade_gt_maps(shapes_ade), num_classes=3, reduce_zero_label=True)


def cityscapes_from_ade(ade_root, out):
    """The ADE20K-format shapes in Cityscapes' layout and names (one 'city' per split);
    labels 0..3 become train ids 0..3 (road, sidewalk, building, wall)."""
    for ade_split, split in (('training', 'train'), ('validation', 'val')):
        img_dir = osp.join(out, 'leftImg8bit', split, 'shapes')
        ann_dir = osp.join(out, 'gtFine', split, 'shapes')
        os.makedirs(img_dir)
        os.makedirs(ann_dir)
        for name in sorted(os.listdir(osp.join(ade_root, 'images', ade_split))):
            stem = 'shapes_' + name[:-4].split('_')[-1] + '_000019'
            img = cv2.imread(osp.join(ade_root, 'images', ade_split, name))
            cv2.imwrite(osp.join(img_dir, stem + '_leftImg8bit.png'), img)
            shutil.copy(
                osp.join(ade_root, 'annotations', ade_split, name[:-4] + '.png'),
                osp.join(ann_dir, stem + '_gtFine_labelTrainIds.png'),
            )
    return out


@pytest.mark.parametrize('name', ['unireplknet_t_1k_upernet_80k_cityscapes_512x1024'])
def test_upernet_cityscapes(name, shapes_ade, tmp_path):
    root = cityscapes_from_ade(shapes_ade, str(tmp_path / 'cityscapes'))
    cfg = shrink(Config.fromfile(osp.join(SEG, name + '.py')))
    cfg.merge_from_dict(
        {f'{loader}_dataloader.dataset.data_root': root for loader in ('train', 'val', 'test')}
    )
    cfg.merge_from_dict(
        {
            'model.decode_head.in_channels': DIMS,
            'model.decode_head.channels': 32,
            'model.auxiliary_head.in_channels': DIMS[2],
            'model.auxiliary_head.channels': 16,
        }
    )
    ann_root = osp.join(root, 'gtFine', 'val')
    gt_maps = {
        name.replace('_gtFine_labelTrainIds', '_leftImg8bit'): osp.join('shapes', name)
        for name in os.listdir(osp.join(ann_root, 'shapes'))
    }
    check_seg_tools(cfg, tmp_path, ann_root, gt_maps, num_classes=19, reduce_zero_label=False)


CASCADE_SMALL = {  # few proposals and RoIs, narrow RoI heads
    'model.train_cfg.rpn_proposal.max_per_img': 64,
    **{f'model.train_cfg.rcnn.{i}.sampler.num': 16 for i in range(3)},
    **{f'model.roi_head.bbox_head.{i}.conv_out_channels': 32 for i in range(3)},
    **{f'model.roi_head.bbox_head.{i}.fc_out_channels': 64 for i in range(3)},
    'model.test_cfg.rpn.max_per_img': 50,
    'model.test_cfg.rcnn.max_per_img': 20,
}


# -- your own dataset (docs/en/user_guides/custom_dataset.md) -----------------------------------
def test_custom_dataset_example_with_masks(shapes_coco, tmp_path):
    cfg = shrink(Config.fromfile(osp.join(DET, 'example_custom_dataset_cascade_mask_rcnn.py')))
    assert cfg.train_dataloader.dataset.metainfo.classes == ('circle', 'square', 'triangle')
    assert all(h.num_classes == 3 for h in cfg.model.roi_head.bbox_head)
    root = shapes_coco.rstrip('/') + '/'
    cfg.merge_from_dict(
        {
            'train_dataloader.dataset.data_root': root,
            'val_dataloader.dataset.data_root': root,
            'test_dataloader.dataset.data_root': root,
            'val_evaluator.ann_file': root + 'annotations/instances_val.json',
            'test_evaluator.ann_file': root + 'annotations/instances_val.json',
            'model.neck.in_channels': DIMS,
            **CASCADE_SMALL,
            'model.roi_head.mask_head.num_convs': 1,
            'model.roi_head.mask_head.conv_out_channels': 32,
        }
    )
    check_det_tools(cfg, tmp_path, shapes_coco, masks=True)


def test_custom_dataset_example_boxes_only(shapes_coco, tmp_path):
    """On annotations without any `segmentation`: the box-only config trains and evaluates."""
    import json

    root = str(tmp_path / 'boxes')
    os.makedirs(osp.join(root, 'annotations'))
    for split in ('train', 'val'):
        os.symlink(osp.join(shapes_coco, split), osp.join(root, split))
        with open(osp.join(shapes_coco, 'annotations', f'instances_{split}.json')) as f:
            coco = json.load(f)
        for ann in coco['annotations']:
            del ann['segmentation']
        with open(osp.join(root, 'annotations', f'instances_{split}.json'), 'w') as f:
            json.dump(coco, f)
    cfg = shrink(Config.fromfile(osp.join(DET, 'example_custom_dataset_cascade_rcnn.py')))
    assert cfg.model.roi_head.mask_head is None and cfg.val_evaluator.metric == 'bbox'
    coco_data(cfg, root)
    cfg.merge_from_dict({'model.neck.in_channels': DIMS, **CASCADE_SMALL})
    check_det_tools(cfg, tmp_path, root, masks=False)


def test_custom_dataset_example_segmentation(shapes_ade, tmp_path):
    """The ADE20K-layout example with the shapes' 4 classes (0 is the background class)."""
    cfg = shrink(Config.fromfile(osp.join(SEG, 'example_custom_dataset_upernet.py')))
    assert cfg.model.decode_head.num_classes == 4 == cfg.model.auxiliary_head.num_classes
    cfg.merge_from_dict(
        {
            **{f'{loader}_dataloader.dataset.data_root': shapes_ade for loader in ('train', 'val')},
            'test_dataloader.dataset.data_root': shapes_ade,
            'model.decode_head.in_channels': DIMS,
            'model.decode_head.channels': 32,
            'model.auxiliary_head.in_channels': DIMS[2],
            'model.auxiliary_head.channels': 16,
        }
    )
    check_seg_tools(cfg, tmp_path, *ade_gt_maps(shapes_ade), num_classes=4, reduce_zero_label=False)


# -- params and FLOPs of the new families (tools/analysis_tools/get_flops.py) -------------------
@pytest.mark.parametrize(
    'config, counted',
    [
        (osp.join(DET, 'unireplknet_b_22k_dino_12e.py'), "model.forward(mode='tensor')"),
        (
            osp.join(SEG, 'unireplknet_b_22k_mask2former_160k_640.py'),
            'backbone + decode head (every decoder layer, no post-processing)',
        ),
        (
            osp.join(DET, 'unireplknet_t_1k_mask_rcnn_1x.py'),
            'backbone + neck + RPN head + RoI heads on 1000 proposals (masks on 100)',
        ),
    ],
)
def test_get_flops_counts_the_new_families(config, counted, monkeypatch):
    """DINO through its tensor-mode forward, Mask2Former with the data samples its head needs,
    Mask R-CNN as Cascade: each counted whole (more than its backbone alone), its params those of
    the model it built."""
    from mmengine.analysis import get_model_complexity_info

    get_flops = load_tool('get_flops')
    built, build = [], get_flops.build_model
    monkeypatch.setattr(get_flops, 'build_model', lambda cfg: built.append(build(cfg)) or built[-1])
    head = 'model.decode_head' if 'mask2former' in config else 'model.neck'
    options = {'model.backbone.arch': TINY_ARCH, f'{head}.in_channels': DIMS}
    result = get_flops.get_flops(config, (96, 128), options, deploy=True)
    assert result['counted'] == counted
    (model,) = built
    assert result['params'] == sum(p.numel() for p in model.parameters())
    backbone = get_model_complexity_info(
        model.backbone, inputs=(torch.rand(1, 3, 96, 128),), show_table=False, show_arch=False
    )
    assert result['flops'] > 1.5 * backbone['flops'] > 0
