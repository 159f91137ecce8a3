"""Comparing an exported model's outputs with PyTorch's."""

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` ``(N, 4)`` with every box of ``b`` ``(M, 4)``: ``(N, M)``."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def matched_fraction(ref_boxes, ref_labels, boxes, labels, iou_thr: float = 0.95) -> float:
    """The fraction of the reference detections that have a detection of the same label with an
    IoU of at least ``iou_thr`` in the other set (1.0 for no reference detection)."""
    ref_boxes, boxes = np.asarray(ref_boxes, np.float64), np.asarray(boxes, np.float64)
    if len(ref_boxes) == 0:
        return 1.0
    if len(boxes) == 0:
        return 0.0
    iou = box_iou(ref_boxes, boxes)
    same = np.asarray(ref_labels)[:, None] == np.asarray(labels)[None, :]
    return float(((iou >= iou_thr) & same).any(axis=1).mean())
