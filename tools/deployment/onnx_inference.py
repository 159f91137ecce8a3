"""Run an exported UniRepLKNet detector or segmentor on an image with onnxruntime alone.

    python tools/deployment/onnx_inference.py det.onnx image.jpg --out-file vis.png \\
        [--out-json dets.json] [--score-thr 0.3]
    python tools/deployment/onnx_inference.py seg.onnx image.jpg --out-file vis.png \\
        [--out-label-map labels.png]

Needs onnxruntime, numpy and opencv-python, no torch or OpenMMLab package: the file exported by
tools/deployment/export_onnx.py carries, as metadata, the test pipeline's resize, the data
pre-processor's normalization and padding, and the classes. This script repeats them as
MMDetection / MMSegmentation do (mmcv's cv2 resize, keep-ratio scale and rounding; padding at
the bottom and right after normalization), runs the model, and post-processes as they do:
detections' boxes scaled back to the image and their 28x28 masks pasted into it (bilinear, as
MMDetection's CPU path, then thresholded); segmentation logits without the padding, resized
bilinearly to the image and arg-maxed. The JSON holds every detection the model keeps (above the
config's score_thr, or --score-thr where that is lower; box x1 y1 x2 y2 in the image's pixels,
score, label, class name, mask as COCO's uncompressed RLE); the drawing those above --score-thr.
"""

import argparse
import json
import os
import os.path as osp
import tempfile

import cv2
import numpy as np
import onnxruntime as ort

METADATA_KEY = 'mmunirep'


def load_model(path: str, threads: int = 0):
    """An onnxruntime session of ``path`` (``threads`` intra-op threads, 0: onnxruntime's
    default) and the metadata the exporter stored in it."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if not osp.isfile(path):
        raise FileNotFoundError(f'no such model file: {path!r}')
    try:
        session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    except Exception as error:  # onnxruntime raises its own exception types
        raise ValueError(
            f'{path} is not an ONNX model onnxruntime can load ({type(error).__name__}: {error})'
        ) from None
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise ValueError(
            f'{path} has no mmunirep metadata: export it with tools/deployment/export_onnx.py'
        )
    meta = json.loads(raw)
    if meta.get('task') not in ('detection', 'segmentation'):
        raise ValueError(
            f'{path} is an exported {meta.get("task")}; this script runs detectors and segmentors'
        )
    return session, meta


def rescale_size(width: int, height: int, scale) -> tuple:
    """mmcv's ``rescale_size`` with a (long edge, short edge) scale: the keep-ratio size."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def preprocess(image: np.ndarray, spec: dict):
    """A BGR uint8 image -> the model's input ``(1, 3, H, W)`` float32, the resized image's
    (h, w) inside the padding, and the (w, h) scale factor of the resize."""
    height, width = image.shape[:2]
    resize = spec.get('resize')
    if resize:
        if resize['keep_ratio']:
            size = rescale_size(width, height, resize['scale'])
        else:
            size = tuple(resize['scale'])
        if min(size) < 1:
            raise ValueError(
                f'a {width}x{height} image resizes to {size[0]}x{size[1]} under the scale '
                f"{resize['scale']}: too narrow for the model's test resize"
            )
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    divisor = spec.get('resize_to_multiple')
    if divisor:  # MMSegmentation's ResizeToMultiple: up to the next multiple, by resizing
        h, w = image.shape[:2]
        size = (int(np.ceil(w / divisor)) * divisor, int(np.ceil(h / divisor)) * divisor)
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    h, w = image.shape[:2]
    scale = (w / width, h / height)
    x = image.astype(np.float32)
    if spec['bgr_to_rgb']:
        x = x[..., ::-1]
    x = (x - np.array(spec['mean'], np.float32)) / np.array(spec['std'], np.float32)
    div = spec.get('pad_size_divisor', 1)
    pad_h, pad_w = int(np.ceil(h / div)) * div, int(np.ceil(w / div)) * div
    padded = np.full((pad_h, pad_w, 3), spec.get('pad_value', 0.0), np.float32)
    padded[:h, :w] = x
    return padded.transpose(2, 0, 1)[None].copy(), (h, w), scale


def paste_mask(mask: np.ndarray, box, height: int, width: int, threshold: float) -> np.ndarray:
    """A ``(M, M)`` probability map over ``box`` (x1 y1 x2 y2, image pixels) -> a boolean
    ``(height, width)`` mask, as MMDetection's ``_do_paste_mask`` on the CPU: the pixels' centres
    sampled bilinearly (grid_sample, align_corners=False, zeros outside the map) within the box
    and one pixel around it, then compared with ``threshold``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    out = np.zeros((height, width), bool)
    left, top = max(int(np.floor(x0)) - 1, 0), max(int(np.floor(y0)) - 1, 0)
    right, bottom = min(int(np.ceil(x1)) + 1, width), min(int(np.ceil(y1)) + 1, height)
    if right <= left or bottom <= top:
        return out
    m = mask.shape[0]

    def coords(start, stop, lo, hi):
        c = (np.arange(start, stop, dtype=np.float32) + 0.5 - lo) / max(hi - lo, 1e-12)
        return (c * 2 - 1 + 1) * m / 2 - 0.5  # grid_sample's unnormalization

    ys, xs = coords(top, bottom, y0, y1), coords(left, right, x0, x1)
    y_lo, x_lo = np.floor(ys).astype(int), np.floor(xs).astype(int)
    wy, wx = (ys - y_lo)[:, None], (xs - x_lo)[None, :]
    padded = np.zeros((m + 2, m + 2), np.float32)  # zeros around the map
    padded[1:-1, 1:-1] = mask
    yi, xi = np.clip(y_lo + 1, 0, m + 1), np.clip(x_lo + 1, 0, m + 1)
    yj, xj = np.clip(y_lo + 2, 0, m + 1), np.clip(x_lo + 2, 0, m + 1)
    values = (
        padded[yi][:, xi] * (1 - wy) * (1 - wx)
        + padded[yi][:, xj] * (1 - wy) * wx
        + padded[yj][:, xi] * wy * (1 - wx)
        + padded[yj][:, xj] * wy * wx
    )
    out[top:bottom, left:right] = values >= threshold
    return out


def detect(session, meta: dict, image: np.ndarray, score_thr=None) -> dict:
    """Detections in the image's pixels: boxes (K, 4), scores, labels, and boolean masks; those
    scoring above ``score_thr`` (default: the config's, stored at export)."""
    x, shape, scale = preprocess(image, meta['preprocess'])
    if score_thr is None:
        score_thr = meta['postprocess']['score_thr']
    threshold = np.array([score_thr], np.float32)
    feeds = {'input': x, 'image_shape': np.array(shape, np.int64), 'score_threshold': threshold}
    outputs = session.run(None, feeds)
    boxes, scores, labels = outputs[:3]
    boxes = boxes / np.array(scale * 2, np.float32)
    result = dict(boxes=boxes, scores=scores, labels=labels)
    if len(outputs) > 3:
        height, width = image.shape[:2]
        threshold = meta['postprocess']['mask_thr_binary']
        result['masks'] = (
            np.stack(
                [paste_mask(m, b, height, width, threshold) for m, b in zip(outputs[3], boxes)]
            )
            if len(boxes)
            else np.zeros((0, height, width), bool)
        )
    return result


def _corner_aligned_rows(n_out: int, n_in: int):
    """For each of ``n_out`` output rows, the two input rows and the weight of the second, as
    torch's bilinear interpolation with ``align_corners=True`` reads them."""
    src = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    return lo, np.minimum(lo + 1, n_in - 1), (src - lo).astype(np.float32)


def resize_logits(logits: np.ndarray, height: int, width: int, align_corners: bool):
    """``(h, w, C)`` logits resized bilinearly to ``(height, width, C)``, as MMSegmentation
    resizes them to the image. cv2's resize is the ``align_corners=False`` form (and takes at most
    512 channels at once); the other is done here, one axis at a time, as cv2's remap rounds the
    sampling positions to 1/32 of a pixel."""
    if not align_corners:
        return np.concatenate(
            [
                cv2.resize(
                    np.ascontiguousarray(logits[..., i : i + 512]),
                    (width, height),
                    interpolation=cv2.INTER_LINEAR,
                ).reshape(height, width, -1)
                for i in range(0, logits.shape[-1], 512)
            ],
            axis=-1,
        )
    lo, hi, weight = _corner_aligned_rows(height, logits.shape[0])
    rows = logits[lo] * (1 - weight)[:, None, None] + logits[hi] * weight[:, None, None]
    lo, hi, weight = _corner_aligned_rows(width, logits.shape[1])
    return rows[:, lo] * (1 - weight)[None, :, None] + rows[:, hi] * weight[None, :, None]


def segmentation_logits(session, meta: dict, image: np.ndarray) -> np.ndarray:
    """The class logits of each pixel of the image, ``(H, W, classes)``: the model's, without
    the padding, resized to the image."""
    x, (h, w), _ = preprocess(image, meta['preprocess'])
    logits = session.run(None, {'input': x})[0][0].transpose(1, 2, 0)[:h, :w]  # (h, w, classes)
    height, width = image.shape[:2]
    align_corners = bool(meta['postprocess'].get('align_corners', False))
    return resize_logits(logits, height, width, align_corners)


def segment(session, meta: dict, image: np.ndarray) -> np.ndarray:
    """The class index of each pixel of the image, ``(H, W)`` int64."""
    return segmentation_logits(session, meta, image).argmax(-1)


def palette(meta: dict, n: int) -> np.ndarray:
    """RGB colours of the classes: the dataset's palette, else fixed random ones."""
    given = meta.get('palette')
    if given and len(given) >= n:
        return np.array(given[:n], np.uint8)
    return np.random.default_rng(42).integers(40, 256, (max(n, 1), 3), dtype=np.uint8)


def draw_detections(image: np.ndarray, dets: dict, meta: dict, score_thr: float) -> np.ndarray:
    classes = meta.get('classes') or []
    colors = palette(meta, max(len(classes), int(dets['labels'].max(initial=0)) + 1))
    out = image.copy()
    keep = dets['scores'] >= score_thr
    for i in np.flatnonzero(keep)[::-1]:  # the highest score drawn last, on top
        color = colors[dets['labels'][i]][::-1].tolist()  # RGB -> BGR
        if 'masks' in dets:
            m = dets['masks'][i]
            out[m] = (0.5 * out[m] + 0.5 * np.array(color)).astype(np.uint8)
        x0, y0, x1, y1 = (int(round(float(v))) for v in dets['boxes'][i])
        cv2.rectangle(out, (x0, y0), (x1, y1), color, 2)
        label = int(dets['labels'][i])
        name = classes[label] if label < len(classes) else str(label)
        cv2.putText(
            out,
            f'{name} {dets["scores"][i]:.2f}',
            (x0, max(y0 - 4, 10)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            color,
            1,
            cv2.LINE_AA,
        )
    return out


def draw_segmentation(image: np.ndarray, labels: np.ndarray, meta: dict) -> np.ndarray:
    colors = palette(meta, max(len(meta.get('classes') or []), int(labels.max()) + 1))
    painted = colors[labels][..., ::-1]  # RGB -> BGR
    return (0.5 * image + 0.5 * painted).astype(np.uint8)


def rle_encode(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a boolean mask (column-major runs, starting with zeros)."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    changes = np.flatnonzero(
        np.diff(np.concatenate([[0], flat, [1 - flat[-1] if len(flat) else 0]]))
    )
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    return dict(size=list(mask.shape), counts=counts)


def detections_json(dets: dict, meta: dict) -> list:
    classes = meta.get('classes') or []
    items = []
    for i in range(len(dets['scores'])):
        label = int(dets['labels'][i])
        item = dict(
            bbox=[round(float(v), 2) for v in dets['boxes'][i]],
            score=round(float(dets['scores'][i]), 5),
            label=label,
            class_name=classes[label] if label < len(classes) else str(label),
        )
        if 'masks' in dets:
            item['mask'] = rle_encode(dets['masks'][i])
        items.append(item)
    return items


def write_whole(path: str, write) -> None:
    """``write(tmp)`` into a file beside ``path``, renamed into place once it is complete.

    mmunirep.utils.fileio does the same, but this script must run without mmunirep installed."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f'.{osp.basename(path)}.', suffix=osp.splitext(path)[1], dir=folder
    )
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's file is private; give the usual mode
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def _imwrite(image):
    def write(tmp):
        if not cv2.imwrite(tmp, image):
            raise OSError(f'could not write {tmp}')

    return write


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Run an exported UniRepLKNet model')
    parser.add_argument('model', help='the .onnx file export_onnx.py wrote')
    parser.add_argument('image', help='an image file')
    parser.add_argument('--out-file', help='the drawn result')
    parser.add_argument('--out-json', help='detectors: every detection as JSON')
    parser.add_argument(
        '--out-label-map',
        help='segmentors: the class index of each pixel, as '
        'a PNG (uint8; uint16 for more than 256 classes)',
    )
    parser.add_argument(
        '--score-thr', type=float, default=0.3, help='detectors: the lowest score drawn'
    )
    parser.add_argument(
        '--threads', type=int, default=0, help='onnxruntime intra-op threads (0: its default)'
    )
    args = parser.parse_args(argv)
    if not (args.out_file or args.out_json or args.out_label_map):
        parser.error('give at least one of --out-file, --out-json, --out-label-map')
    if args.threads < 0:
        parser.error(f'--threads must be >= 0, got {args.threads}')
    if not 0 <= args.score_thr <= 1:
        parser.error(f'--score-thr is a score between 0 and 1, got {args.score_thr}')
    return args


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.image):
        raise FileNotFoundError(f'no such image file: {args.image!r}')
    image = cv2.imread(args.image, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f'{args.image} is not an image OpenCV can decode')
    session, meta = load_model(args.model, args.threads)
    if meta['task'] == 'detection':
        if args.out_label_map:
            raise ValueError('--out-label-map is for segmentors; this is a detector')
        # the graph keeps what the config keeps, and more where the drawing asks for more
        dets = detect(session, meta, image, min(args.score_thr, meta['postprocess']['score_thr']))
        if args.out_json:
            text = json.dumps(detections_json(dets, meta))
            write_whole(args.out_json, lambda tmp: open(tmp, 'w').write(text))
        if args.out_file:
            write_whole(args.out_file, _imwrite(draw_detections(image, dets, meta, args.score_thr)))
        return dets
    if args.out_json:
        raise ValueError('--out-json is for detectors; this is a segmentor')
    labels = segment(session, meta, image)
    if args.out_label_map:
        dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint16
        write_whole(args.out_label_map, _imwrite(labels.astype(dtype)))
    if args.out_file:
        write_whole(args.out_file, _imwrite(draw_segmentation(image, labels, meta)))
    return labels


if __name__ == '__main__':
    main()
