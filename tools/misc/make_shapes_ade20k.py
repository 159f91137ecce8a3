"""Generate a small synthetic semantic-segmentation dataset in the ADE20K layout.

    python tools/misc/make_shapes_ade20k.py --out data/shapes_ade [--num-train 300 --num-val 30
                                                             --size 128 --seed 0]

Layout (as MMSegmentation's ADE20KDataset expects)::

    OUT/images/training/ADE_train_00000000.jpg      OUT/annotations/training/ADE_train_00000000.png
    OUT/images/validation/ADE_val_00000000.jpg      OUT/annotations/validation/ADE_val_00000000.png

Each image shows 2 to 5 filled shapes (circles, squares, triangles; rotated, overlapping) on a
noisy colour-gradient background. The label maps are 8-bit PNGs where 0 is the background and
1..3 are the shape classes, in the order of ``CLASSES``: the quick start trains on the four
``SEG_CLASSES`` (background first, ``reduce_zero_label=False``), so that what it predicts and
draws for the background is checked like the shapes. With ADE20K's convention instead
(``reduce_zero_label=True``: 0 becomes the ignore index 255, the shapes 0..2) the background is
neither learned nor scored. Each class has its own colour (jittered, on a background of any
colour), which lets a small model trained from scratch on a CPU for a few minutes learn it. The
same seed gives the same files.
"""

import argparse
import os
import os.path as osp
import sys

import cv2
import numpy as np

CLASSES = ('circle', 'square', 'triangle')
PALETTE = ((220, 20, 60), (0, 170, 0), (30, 60, 255))  # RGB, as configs give palettes
# the classes of the label values 0..3, as configs/segmentation/quickstart_unireplknet_a_shapes.py
SEG_CLASSES = ('background',) + CLASSES
SEG_PALETTE = ((0, 0, 0),) + PALETTE
SPLITS = (('training', 'train'), ('validation', 'val'))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Generate a small ADE20K-format shapes dataset')
    parser.add_argument('--out', required=True, help='output root (e.g. data/shapes_ade)')
    parser.add_argument('--num-train', type=int, default=300, help='training images')
    parser.add_argument('--num-val', type=int, default=30, help='validation images')
    parser.add_argument('--size', type=int, default=128, help='image side in pixels')
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    args = parser.parse_args(argv)
    if args.num_train < 1 or args.num_val < 1:
        parser.error('--num-train and --num-val must be at least 1')
    if args.size < 32:
        parser.error('--size must be at least 32')
    return args


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random linear colour gradient plus pixel noise, float32 HxWx3 (BGR) in [0, 255]."""
    c0, c1 = rng.uniform(40, 215, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    t = np.cos(angle) * xx + np.sin(angle) * yy
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    img += rng.normal(0, 12, size=img.shape)
    return img.astype(np.float32)


def _shape_color(rng: np.random.Generator, label: int) -> np.ndarray:
    """BGR colour: the class's palette colour, jittered."""
    rgb = np.array(PALETTE[label - 1], np.float64) + rng.normal(0, 30, size=3)
    return np.clip(rgb[::-1], 0, 255)


def _shape_mask(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    radius = rng.uniform(size / 10, size / 4)
    cx, cy = rng.uniform(radius, size - radius, size=2)
    if CLASSES[label - 1] == 'circle':
        cv2.circle(
            mask, (int(round(cx)), int(round(cy))), int(round(radius)), 1, -1, lineType=cv2.LINE_8
        )
    else:
        n = 4 if CLASSES[label - 1] == 'square' else 3
        start = rng.uniform(0, 2 * np.pi)
        angles = start + 2 * np.pi * np.arange(n) / n
        pts = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1, lineType=cv2.LINE_8)
    return mask.astype(bool)


def make_sample(rng: np.random.Generator, size: int):
    """One (BGR uint8 image, uint8 label map) pair."""
    img = _background(rng, size)
    label_map = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(2, 6))):
        label = int(rng.integers(1, len(CLASSES) + 1))
        mask = _shape_mask(rng, label, size)
        color = _shape_color(rng, label)
        shade = rng.normal(0, 8, size=(size, size, 1))
        img[mask] = (color[None, None] + shade)[mask]
        label_map[mask] = label
    return np.clip(img, 0, 255).astype(np.uint8), label_map


def generate(
    out: str, num_train: int = 300, num_val: int = 30, size: int = 128, seed: int = 0
) -> dict:
    """Write the dataset under ``out``; returns the number of images per split."""
    counts = {}
    for (split, prefix), num in zip(SPLITS, (num_train, num_val)):
        img_dir = osp.join(out, 'images', split)
        ann_dir = osp.join(out, 'annotations', split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        # one stream per split, so that --num-train does not change the validation images
        rng = np.random.default_rng([seed, 0 if split == 'training' else 1])
        for i in range(num):
            img, label_map = make_sample(rng, size)
            name = f'ADE_{prefix}_{i:08d}'
            if not cv2.imwrite(
                osp.join(img_dir, name + '.jpg'), img, [cv2.IMWRITE_JPEG_QUALITY, 95]
            ):
                raise OSError(f'could not write {osp.join(img_dir, name + ".jpg")}')
            if not cv2.imwrite(osp.join(ann_dir, name + '.png'), label_map):
                raise OSError(f'could not write {osp.join(ann_dir, name + ".png")}')
        counts[split] = num
    return counts


def main(argv=None):
    args = parse_args(argv)
    counts = generate(args.out, args.num_train, args.num_val, args.size, args.seed)
    sys.stdout.write(
        f'wrote {counts["training"]} training and {counts["validation"]} validation '
        f'images ({args.size}x{args.size}, label values 0..3: {", ".join(SEG_CLASSES)}) to '
        f'{args.out}\n'
    )


if __name__ == '__main__':
    main()
