"""Checking an exported model: its operator domains, and its outputs against PyTorch's."""

import numpy as np


def custom_operator_domains(model) -> set:
    """The operator domains of an ``onnx.ModelProto`` other than ONNX's own: of its opset imports
    and of every node, those of subgraphs (If, Loop, Scan) included. onnx.checker accepts any
    registered domain, so it does not say whether a graph is standard ONNX."""
    import onnx

    domains = {opset.domain for opset in model.opset_import}
    graphs = [model.graph]
    while graphs:
        for node in graphs.pop().node:
            domains.add(node.domain)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    graphs.append(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    graphs.extend(attr.graphs)
    return domains - {'', 'ai.onnx'}


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
