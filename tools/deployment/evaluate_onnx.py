"""Score an exported detector or segmentor on a dataset, as tools/test.py scores the PyTorch model.

    python tools/deployment/evaluate_onnx.py det.onnx --img-dir IMAGES/ --ann-file ANN.json \\
        [--pytorch-predictions predictions.pkl] [--out-json results.json] [--threads 2]
    python tools/deployment/evaluate_onnx.py seg.onnx --img-dir IMAGES/ --ann-dir LABELS/ \\
        [--pytorch-predictions LABEL_MAPS/] [--threads 2]

Detectors: each image of the COCO-format annotation file goes through onnx_inference.py's
detection (the preprocessing stored in the ONNX file, the model in onnxruntime, boxes scaled back
and masks pasted), and pycocotools scores the boxes and masks with the settings of MMDetection's
CocoMetric (max detections 100 / 300 / 1000; mAP is the first of COCOeval's figures). Classes are
matched to the annotation file's categories by name. With --pytorch-predictions
(``tools/test.py --out predictions.pkl`` of the same checkpoint on the same images), also the
share of PyTorch's detections with a score of at least --match-score that have an ONNX detection
of the same class with IoU >= --match-iou.

Segmentors: the images and label maps are paired, the label maps read and the predictions scored
by MMSegmentation itself (BaseSegDataset's folder layout, LoadAnnotations, IoUMetric: aAcc, mIoU,
mAcc in percent), with the suffixes, ``reduce_zero_label`` and ``ignore_index`` of the config's
test dataset and metric, which the exporter stores in the file (the options below override them).
Each image goes through onnx_inference.py's segmentation (preprocessing, model, logits resized to
the image, arg-max). With --pytorch-predictions (the folder of label maps that
``tools/test.py --out DIR`` writes for the same checkpoint), also the share of pixels where the
two label maps agree.
"""

import argparse
import copy
import json
import os.path as osp
import sys

import cv2
import numpy as np

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import onnx_inference  # noqa: E402  (the script beside this one, not a package)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('model', help='the detector or segmentor export_onnx.py wrote')
    parser.add_argument('--img-dir', required=True, help='the folder of the images')
    parser.add_argument('--ann-file', help='detectors: the COCO-format annotations')
    parser.add_argument('--ann-dir', help="segmentors: the folder of the images' label maps")
    parser.add_argument(
        '--pytorch-predictions',
        help="tools/test.py's --out of the same checkpoint to compare with: a detector's .pkl, "
        "a segmentor's folder of label maps",
    )
    parser.add_argument(
        '--match-score',
        type=float,
        default=0.3,
        help="detectors: the lowest score of PyTorch's detections that must be matched",
    )
    parser.add_argument(
        '--match-iou',
        type=float,
        default=0.95,
        help='detectors: the lowest IoU of a match (same class)',
    )
    parser.add_argument('--out-json', help='detectors: the detections in COCO results format')
    parser.add_argument(
        '--img-suffix', help="segmentors: the images' file ending (default: the config's)"
    )
    parser.add_argument(
        '--seg-map-suffix', help="segmentors: the label maps' file ending (default: the config's)"
    )
    parser.add_argument(
        '--reduce-zero-label',
        action=argparse.BooleanOptionalAction,
        help='segmentors: label 0 of the maps is ignored and label k is class k - 1 (default: the '
        "config's)",
    )
    parser.add_argument('--threads', type=int, default=0, help='onnxruntime intra-op threads')
    args = parser.parse_args(argv)
    for name in ('model', 'ann_file', 'img_dir', 'ann_dir'):
        path = getattr(args, name)
        if path is not None and not (osp.isfile if name in ('model', 'ann_file') else osp.isdir)(
            path
        ):
            parser.error(f'--{name.replace("_", "-")}: {path} does not exist')
    if args.threads < 0:
        parser.error(f'--threads must be >= 0, got {args.threads}')
    if not 0 < args.match_iou <= 1:
        parser.error(f'--match-iou must be in (0, 1], got {args.match_iou}')
    return args


def check_task_arguments(args, task: str) -> None:
    """Refuse the options of the other task, and require the annotations of this one."""
    own, other = ('ann_file', 'ann_dir') if task == 'detection' else ('ann_dir', 'ann_file')
    if getattr(args, own) is None:
        raise ValueError(f'{args.model} is an exported {task}: give --{own.replace("_", "-")}')
    wrong = [other] + (
        ['img_suffix', 'seg_map_suffix', 'reduce_zero_label']
        if task == 'detection'
        else ['out_json']
    )
    given = [
        ('--no-' if getattr(args, name) is False else '--') + name.replace('_', '-')
        for name in wrong
        if getattr(args, name) is not None
    ]
    if given:
        raise ValueError(f'{args.model} is an exported {task}: {", ".join(given)} do not apply')


def category_ids(coco, classes) -> list:
    """The annotation file's category id of each class, by name."""
    by_name = {c['name']: c['id'] for c in coco.loadCats(coco.getCatIds())}
    missing = [c for c in classes if c not in by_name]
    if missing:
        raise ValueError(
            f"the model's classes {missing} are not categories of the annotation file "
            f'(which has {sorted(by_name)})'
        )
    return [by_name[c] for c in classes]


def detect_all(session, meta, coco, img_dir, cat_ids) -> tuple:
    """The detections of each image without their masks (for the comparison with PyTorch), and
    all of them in COCO's results format. Masks are RLE-encoded image by image: a whole set's
    masks pasted into its images would not fit in memory."""
    detections, results = {}, dict(bbox=[], segm=[])
    for img_id in coco.getImgIds():
        info = coco.loadImgs(img_id)[0]
        path = osp.join(img_dir, info['file_name'])
        image = cv2.imread(path)
        if image is None:
            raise FileNotFoundError(f'cannot read image {path} (image id {img_id})')
        dets = onnx_inference.detect(session, meta, image)
        add_coco_results(results, img_id, dets, cat_ids)
        detections[img_id] = {k: v for k, v in dets.items() if k != 'masks'}
    return detections, {k: v for k, v in results.items() if v or k == 'bbox'}


def add_coco_results(results: dict, img_id: int, dets: dict, cat_ids: list) -> None:
    from pycocotools import mask as mask_utils

    for i, (box, score, label) in enumerate(zip(dets['boxes'], dets['scores'], dets['labels'])):
        x1, y1, x2, y2 = (float(v) for v in box)
        item = dict(image_id=img_id, category_id=cat_ids[int(label)], score=float(score))
        results['bbox'].append(dict(item, bbox=[x1, y1, x2 - x1, y2 - y1]))
        if 'masks' in dets:
            rle = mask_utils.encode(np.asfortranarray(dets['masks'][i].astype(np.uint8)))
            rle['counts'] = rle['counts'].decode()
            results['segm'].append(dict(item, segmentation=rle))


def evaluate(coco, results: dict) -> dict:
    """pycocotools' mAP per IoU type, with CocoMetric's max-detection settings."""
    from pycocotools.cocoeval import COCOeval

    scores = {}
    for iou_type, dets in results.items():
        if not dets:
            scores[f'{iou_type}_mAP'] = 0.0
            continue
        evaluator = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), iou_type)
        evaluator.params.maxDets = [100, 300, 1000]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        scores[f'{iou_type}_mAP'] = float(evaluator.stats[0])
    return scores


def load_pytorch_predictions(path: str) -> list:
    """The per-image predictions ``tools/test.py --out FILE.pkl`` dumped for a detector."""
    from mmengine.fileio import load

    try:
        preds = load(path, file_format='pkl')
    except Exception as error:  # a pickle of anything, or not a pickle
        raise ValueError(
            f"{path} is not the .pkl of a detector's predictions that tools/test.py --out "
            f'writes ({type(error).__name__}: {error})'
        ) from None
    if not isinstance(preds, list) or not all(
        isinstance(p, dict) and {'img_id', 'pred_instances'} <= set(p) for p in preds
    ):
        raise ValueError(
            f"{path} is not the .pkl of a detector's predictions that tools/test.py --out writes "
            "(a list of dicts with 'img_id' and 'pred_instances')"
        )
    return preds


def match_pytorch(preds: list, detections: dict, min_score: float, iou: float) -> tuple:
    """(matched, compared): PyTorch's detections above ``min_score`` and how many of them have an
    ONNX detection of the same class with IoU >= ``iou``."""
    from mmunirep.deploy.verify import matched_fraction

    compared = matched = 0
    for pred in preds:
        if pred['img_id'] not in detections:
            raise ValueError(
                f'the PyTorch predictions have image id {pred["img_id"]}, which the annotations '
                'lack'
            )
        inst = pred['pred_instances']
        keep = (inst['scores'] >= min_score).numpy()
        dets = detections[pred['img_id']]
        n = int(keep.sum())
        compared += n
        matched += round(
            n
            * matched_fraction(
                inst['bboxes'].numpy()[keep],
                inst['labels'].numpy()[keep],
                dets['boxes'],
                dets['labels'],
                iou,
            )
        )
    return matched, compared


def score_detector(args, session, meta) -> dict:
    from pycocotools.coco import COCO

    preds = load_pytorch_predictions(args.pytorch_predictions) if args.pytorch_predictions else None
    try:
        coco = COCO(args.ann_file)
    except (ValueError, KeyError, TypeError) as error:  # json's decode error is a ValueError
        raise ValueError(
            f'{args.ann_file} is not a COCO-format annotation file ({type(error).__name__}: '
            f'{error})'
        ) from None
    missing = {'images', 'annotations', 'categories'} - set(coco.dataset)
    if missing:
        raise ValueError(
            f'{args.ann_file} is not a COCO-format annotation file: no {sorted(missing)}'
        )
    cat_ids = category_ids(coco, meta['classes'])
    detections, results = detect_all(session, meta, coco, args.img_dir, cat_ids)
    scores = evaluate(coco, results)
    if args.out_json:
        onnx_inference.write_whole(
            args.out_json, lambda tmp: open(tmp, 'w').write(json.dumps(results['bbox']))
        )
    print(' '.join(f'{k}: {v:.4f}' for k, v in scores.items()))  # noqa: T201 (the report)
    if preds is not None:
        matched, compared = match_pytorch(preds, detections, args.match_score, args.match_iou)
        scores.update(matched=matched, compared=compared)
        print(  # noqa: T201 (the report)
            f"PyTorch's detections with score >= {args.match_score}: {compared}, with an ONNX "
            f'detection of the same class at IoU >= {args.match_iou}: {matched} '
            f'({100 * matched / max(compared, 1):.1f}%)'
        )
    return scores


def label_map_conventions(args, meta) -> dict:
    """The label maps' suffixes, ``reduce_zero_label`` and ``ignore_index``: the options given,
    else those the exporter stored."""
    stored = meta.get('annotations') or {}
    spec = dict(stored)
    for name in ('img_suffix', 'seg_map_suffix', 'reduce_zero_label'):
        if getattr(args, name) is not None:
            spec[name] = getattr(args, name)
    missing = [n for n in ('img_suffix', 'seg_map_suffix', 'reduce_zero_label') if n not in spec]
    if missing:
        raise ValueError(
            f'{args.model} does not store its label-map conventions (exported by an earlier '
            f'version): give {", ".join("--" + n.replace("_", "-") for n in missing)}, or '
            'export it again'
        )
    return spec


def segmentation_samples(args, meta, spec) -> list:
    """The image / label-map pairs of the folders, as MMSegmentation's BaseSegDataset lists them
    (images by suffix, recursively; the label map of the same name under --ann-dir)."""
    from mmseg.datasets import BaseSegDataset

    dataset = BaseSegDataset(
        data_prefix=dict(img_path=args.img_dir, seg_map_path=args.ann_dir),
        img_suffix=spec['img_suffix'],
        seg_map_suffix=spec['seg_map_suffix'],
        reduce_zero_label=spec['reduce_zero_label'],
        metainfo=dict(classes=meta['classes']),
        test_mode=True,
        lazy_init=True,
    )
    samples = dataset.load_data_list()
    if not samples:
        raise ValueError(f'no image ending in {spec["img_suffix"]!r} under {args.img_dir}')
    unlabelled = [s['seg_map_path'] for s in samples if not osp.isfile(s['seg_map_path'])]
    if unlabelled:
        raise ValueError(
            f'{len(unlabelled)} of {len(samples)} images have no label map ending in '
            f'{spec["seg_map_suffix"]!r}, e.g. {unlabelled[0]}'
        )
    return samples


def check_same_size(what: str, labels: np.ndarray, pred: np.ndarray, img_path: str) -> None:
    if labels.shape != pred.shape:
        (h, w), (ph, pw) = labels.shape, pred.shape
        raise ValueError(f'{what} of {img_path} is {w}x{h}, the image {pw}x{ph}')


def pytorch_label_map(pred_dir: str, img_path: str, reduce_zero_label: bool) -> np.ndarray:
    """The class indices tools/test.py --out DIR saved for the image (IoUMetric names the file
    after the image and adds 1 under ``reduce_zero_label``)."""
    path = osp.join(pred_dir, osp.splitext(osp.basename(img_path))[0] + '.png')
    labels = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if labels is None:
        raise FileNotFoundError(f'--pytorch-predictions: no label map {path} for {img_path}')
    return labels.astype(np.int64) - int(reduce_zero_label)


def score_segmentor(args, session, meta) -> dict:
    import torch
    from mmseg.datasets.transforms import LoadAnnotations
    from mmseg.evaluation import IoUMetric

    if args.pytorch_predictions is not None and not osp.isdir(args.pytorch_predictions):
        raise ValueError(
            f'--pytorch-predictions: {args.pytorch_predictions} is not the folder of label maps '
            'that tools/test.py --out DIR writes for a segmentor'
        )
    spec = label_map_conventions(args, meta)
    # ignore_index as the exporter stored it (the config's metric's), else IoUMetric's default
    metric = IoUMetric(
        iou_metrics=['mIoU'], **{k: v for k, v in spec.items() if k == 'ignore_index'}
    )
    metric.dataset_meta = dict(classes=meta['classes'])
    load_labels = LoadAnnotations()
    agree = pixels = 0
    for sample in segmentation_samples(args, meta, spec):
        image = cv2.imread(sample['img_path'])
        if image is None:
            raise FileNotFoundError(f'cannot read image {sample["img_path"]}')
        pred = onnx_inference.segment(session, meta, image)
        truth = load_labels(dict(sample))['gt_seg_map']
        check_same_size('the label map', truth, pred, sample['img_path'])
        pair = dict(pred_sem_seg=dict(data=torch.from_numpy(pred)))
        metric.process({}, [dict(pair, gt_sem_seg=dict(data=torch.from_numpy(truth)))])
        if args.pytorch_predictions is not None:
            theirs = pytorch_label_map(
                args.pytorch_predictions, sample['img_path'], spec['reduce_zero_label']
            )
            check_same_size("PyTorch's label map", theirs, pred, sample['img_path'])
            agree += int((theirs == pred).sum())
            pixels += pred.size
    scores = metric.compute_metrics(metric.results)  # logs the per-class table
    print(' '.join(f'{k}: {v:.2f}' for k, v in scores.items()))  # noqa: T201 (the report)
    if args.pytorch_predictions is not None:
        scores['pixel_agreement'] = agree / pixels
        print(  # noqa: T201 (the report)
            f"pixels labelled as in PyTorch's label maps: {agree} of {pixels} "
            f'({100 * agree / pixels:.2f}%)'
        )
    return scores


def main(argv=None) -> dict:
    args = parse_args(argv)
    session, meta = onnx_inference.load_model(args.model, args.threads)
    check_task_arguments(args, meta['task'])
    if meta['task'] == 'detection':
        return score_detector(args, session, meta)
    return score_segmentor(args, session, meta)


if __name__ == '__main__':
    main()
