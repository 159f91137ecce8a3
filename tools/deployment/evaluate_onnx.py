"""Score an exported detector on a COCO-format dataset, as tools/test.py scores the PyTorch model.

    python tools/deployment/evaluate_onnx.py det.onnx --ann-file ANN.json --img-dir IMAGES/ \\
        [--pytorch-predictions predictions.pkl] [--out-json results.json] [--threads 2]

Each image of the annotation file goes through onnx_inference.py's detection (the preprocessing
stored in the ONNX file, the model in onnxruntime, boxes scaled back and masks pasted), and
pycocotools scores the boxes and masks with the settings of MMDetection's CocoMetric (max
detections 100 / 300 / 1000; mAP is the first of COCOeval's figures). Classes are matched to the
annotation file's categories by name.

With --pytorch-predictions (``tools/test.py --out predictions.pkl`` of the same checkpoint on the
same images), also the share of PyTorch's detections with a score of at least --match-score that
have an ONNX detection of the same class with IoU >= --match-iou.
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
    parser.add_argument('model', help='the detector export_onnx.py wrote')
    parser.add_argument('--ann-file', required=True, help='COCO-format annotations')
    parser.add_argument('--img-dir', required=True, help='the folder of their images')
    parser.add_argument('--pytorch-predictions', help="tools/test.py's --out file to compare with")
    parser.add_argument('--match-score', type=float, default=0.3)
    parser.add_argument('--match-iou', type=float, default=0.95)
    parser.add_argument('--out-json', help='the detections in COCO results format (boxes)')
    parser.add_argument('--threads', type=int, default=0, help='onnxruntime intra-op threads')
    args = parser.parse_args(argv)
    for name in ('model', 'ann_file', 'img_dir'):
        path = getattr(args, name)
        if not (osp.isdir if name == 'img_dir' else osp.isfile)(path):
            parser.error(f'--{name.replace("_", "-")}: {path} does not exist')
    if args.threads < 0:
        parser.error(f'--threads must be >= 0, got {args.threads}')
    if not 0 < args.match_iou <= 1:
        parser.error(f'--match-iou must be in (0, 1], got {args.match_iou}')
    return args


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


def detect_all(session, meta, coco, img_dir) -> dict:
    detections = {}
    for img_id in coco.getImgIds():
        info = coco.loadImgs(img_id)[0]
        path = osp.join(img_dir, info['file_name'])
        image = cv2.imread(path)
        if image is None:
            raise FileNotFoundError(f'cannot read image {path} (image id {img_id})')
        detections[img_id] = onnx_inference.detect(session, meta, image)
    return detections


def coco_results(detections: dict, cat_ids: list) -> dict:
    from pycocotools import mask as mask_utils

    results = dict(bbox=[], segm=[])
    for img_id, dets in detections.items():
        for i, (box, score, label) in enumerate(zip(dets['boxes'], dets['scores'], dets['labels'])):
            x1, y1, x2, y2 = (float(v) for v in box)
            item = dict(image_id=img_id, category_id=cat_ids[int(label)], score=float(score))
            results['bbox'].append(dict(item, bbox=[x1, y1, x2 - x1, y2 - y1]))
            if 'masks' in dets:
                rle = mask_utils.encode(np.asfortranarray(dets['masks'][i].astype(np.uint8)))
                rle['counts'] = rle['counts'].decode()
                results['segm'].append(dict(item, segmentation=rle))
    return {k: v for k, v in results.items() if v or k == 'bbox'}


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


def main(argv=None) -> dict:
    from pycocotools.coco import COCO

    args = parse_args(argv)
    session, meta = onnx_inference.load_model(args.model, args.threads)
    if meta['task'] != 'detection':
        raise ValueError(
            f'{args.model} is an exported {meta["task"]}; this script scores detectors'
        )
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
    detections = detect_all(session, meta, coco, args.img_dir)
    results = coco_results(detections, cat_ids)
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


if __name__ == '__main__':
    main()
