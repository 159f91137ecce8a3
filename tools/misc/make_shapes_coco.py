"""Generate a small COCO-format instance-segmentation dataset of simple shapes.

    python tools/misc/make_shapes_coco.py --out data/shapes_coco [--num-train 200 --num-val 40
                                     --size 160 --seed 0]

Three classes (circle, square, triangle), 1-4 objects per image on a noisy, textured background
of any colour. Each class has its own colour (the palette of make_shapes_ade20k.py, jittered per
object), as in the segmentation quick start, so that a small model trained from scratch for a
few minutes on a CPU learns it.
Layout::

    OUT/train/*.png  OUT/val/*.png
    OUT/annotations/instances_train.json  OUT/annotations/instances_val.json

Each annotation has a polygon segmentation, a tight bbox ``[x, y, w, h]`` of the visible object,
its visible pixel area and ``iscrowd=0``. Objects may overlap; the later one is drawn on top, and
the visible part of an occluded object is what its mask, bbox and polygon describe (objects that
become mostly hidden are dropped before drawing). The output depends only on the arguments.
"""

import argparse
import json
import os
import os.path as osp

import cv2
import numpy as np
from mmengine.logging import print_log

CLASSES = ('circle', 'square', 'triangle')
PALETTE = ((220, 20, 60), (0, 170, 0), (30, 60, 255))  # RGB per class
# written into info.version; scripts/quickstart_det.sh regenerates data of another version
DATASET_VERSION = '2.0'  # 2.0: one colour per class (1.0: random colours)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Generate a COCO-format shapes dataset')
    parser.add_argument('--out', default='data/shapes_coco', help='output directory')
    parser.add_argument('--num-train', type=int, default=200, help='training images')
    parser.add_argument('--num-val', type=int, default=40, help='validation images')
    parser.add_argument('--size', type=int, default=160, help='image side in pixels (square)')
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    args = parser.parse_args(argv)
    if args.num_train < 1 or args.num_val < 1:
        parser.error('--num-train and --num-val must be at least 1')
    if args.size < 48:
        parser.error('--size must be at least 48')
    return args


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random color gradient + low-frequency blobs + pixel noise (uint8 HxWx3, BGR)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1, c2 = (rng.uniform(40, 215, 3) for _ in range(3))
    img = (
        c0[None, None] * (1 - xx[..., None]) * (1 - yy[..., None])
        + c1[None, None] * xx[..., None]
        + c2[None, None] * yy[..., None]
    ) / (1 + xx[..., None] * yy[..., None])
    low = rng.normal(0, 25, (6, 6, 3)).astype(np.float32)
    img += cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, 10, (size, size, 3))
    # a few thin random lines as clutter
    canvas = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(0, 4))):
        p1 = tuple(int(v) for v in rng.integers(0, size, 2))
        p2 = tuple(int(v) for v in rng.integers(0, size, 2))
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.line(canvas, p1, p2, color, 1, cv2.LINE_AA)
    return canvas


def _shape_mask(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """Binary mask (uint8 0/1) of one random shape of class ``label``."""
    mask = np.zeros((size, size), np.uint8)
    r = rng.uniform(0.08, 0.2) * size  # "radius"
    cx, cy = rng.uniform(r, size - r, 2)
    if CLASSES[label] == 'circle':
        cv2.circle(mask, (int(round(cx)), int(round(cy))), int(round(r)), 1, -1, cv2.LINE_8)
    else:
        n = 4 if CLASSES[label] == 'square' else 3
        theta = rng.uniform(0, 2 * np.pi)
        angles = theta + 2 * np.pi * np.arange(n) / n
        # squares: circumradius r*sqrt(2) keeps the side 2r; triangles a bit larger
        rad = r * (np.sqrt(2) if n == 4 else 1.3)
        pts = np.stack([cx + rad * np.cos(angles), cy + rad * np.sin(angles)], 1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1, cv2.LINE_8)
    return mask


def _polygons(mask: np.ndarray):
    """COCO polygons (lists of x, y floats) of the outer contours of a binary mask."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        if len(c) < 3 or cv2.contourArea(c) < 4:
            continue
        polys.append([float(v) + 0.5 for v in c.reshape(-1)])  # pixel centers
    return polys


def _visible(masks):
    """Visible part of each mask when drawn in order (later ones on top)."""
    out = []
    for i, mask in enumerate(masks):
        vis = mask.copy()
        for later in masks[i + 1 :]:
            vis &= 1 - later
        out.append(vis)
    return out


def _has_hole(mask: np.ndarray) -> bool:
    """Whether filling the outer contours adds pixels (a hole that polygons cannot describe)."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(mask)
    cv2.drawContours(filled, contours, -1, 1, -1)
    return int(filled.sum()) - int(mask.sum()) > 0


def make_image(rng: np.random.Generator, size: int):
    """One image (BGR uint8) and its objects as (label, visible mask) pairs."""
    img = _background(rng, size)
    objects = []  # (label, full mask, color)
    for _ in range(int(rng.integers(1, 5))):
        label = int(rng.integers(0, len(CLASSES)))
        mask = _shape_mask(rng, label, size)
        # keep every already placed object at least 60% visible and without holes
        masks = [m for _, m, _ in objects]
        vis = _visible(masks + [mask])[:-1]
        if any(v.sum() < 0.6 * m.sum() or _has_hole(v) for v, m in zip(vis, masks)):
            continue
        # each class has its own colour, jittered per object (see the module docstring)
        color = np.array(PALETTE[label][::-1], np.float64) + rng.normal(0, 30, 3)  # RGB -> BGR
        objects.append((label, mask, color))
    for _, mask, color in objects:
        shade = np.clip(color[None, :] + rng.normal(0, 8, (int(mask.sum()), 3)), 0, 255)
        img[mask.astype(bool)] = shade.astype(np.uint8)
    visible = _visible([m for _, m, _ in objects])
    return img, [(label, v) for (label, _, _), v in zip(objects, visible)]


def make_split(out_dir: str, split: str, num: int, size: int, rng: np.random.Generator) -> dict:
    img_dir = osp.join(out_dir, split)
    os.makedirs(img_dir, exist_ok=True)
    images, annotations = [], []
    ann_id = 1
    for i in range(num):
        img, objects = make_image(rng, size)
        file_name = f'{i:05d}.png'
        cv2.imwrite(osp.join(img_dir, file_name), img)
        image_id = i + 1
        images.append(dict(id=image_id, file_name=file_name, height=size, width=size))
        for label, mask in objects:
            polys = _polygons(mask)
            area = int(mask.sum())
            if not polys or area < 16:
                continue
            ys, xs = np.nonzero(mask)
            x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            annotations.append(
                dict(
                    id=ann_id,
                    image_id=image_id,
                    category_id=label + 1,
                    segmentation=polys,
                    area=float(area),
                    bbox=[float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    iscrowd=0,
                )
            )
            ann_id += 1
    coco = dict(
        info=dict(description=f'mmunirep shapes ({split})', version=DATASET_VERSION),
        licenses=[],
        images=images,
        annotations=annotations,
        categories=[
            dict(id=k + 1, name=name, supercategory='shape') for k, name in enumerate(CLASSES)
        ],
    )
    ann_dir = osp.join(out_dir, 'annotations')
    os.makedirs(ann_dir, exist_ok=True)
    ann_file = osp.join(ann_dir, f'instances_{split}.json')
    with open(ann_file, 'w') as f:
        json.dump(coco, f)
    return coco


def main(argv=None):
    args = parse_args(argv)
    # independent streams per split so that --num-train does not change the val images
    seeds = np.random.SeedSequence(args.seed).spawn(2)
    stats = {}
    for split, num, seed in (('train', args.num_train, seeds[0]), ('val', args.num_val, seeds[1])):
        coco = make_split(args.out, split, num, args.size, np.random.default_rng(seed))
        stats[split] = (len(coco['images']), len(coco['annotations']))
    try:  # check that pycocotools reads what we wrote
        import contextlib
        import io

        from pycocotools.coco import COCO

        for split in stats:
            with contextlib.redirect_stdout(io.StringIO()):
                coco = COCO(osp.join(args.out, 'annotations', f'instances_{split}.json'))
            for ann in coco.loadAnns(coco.getAnnIds()[:5]):
                coco.annToMask(ann)
    except ImportError:
        pass
    print_log(
        f'shapes dataset in {args.out}: '
        + ', '.join(f'{s} {n} images / {a} objects' for s, (n, a) in stats.items()),
        logger='current',
    )


if __name__ == '__main__':
    main()
