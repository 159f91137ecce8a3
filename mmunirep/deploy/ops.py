"""The operators a detector's predict path needs, as standard ONNX operators.

MMDetection runs them through mmcv's compiled ops (``mmcv.ops.nms``, ``mmcv.ops.RoIAlign``), which
export only as mmcv's own ONNX domain, and through Python-level filtering that tracing freezes.
Each function here computes in eager mode what the ONNX operator it exports to computes, so that
the traced module and the ONNX graph agree:

- :func:`nms`: ONNX ``NonMaxSuppression`` (opset 11), with mmcv's semantics (corner boxes, a box
  is suppressed by a higher-scoring one whose IoU is above the threshold, scores above the score
  threshold kept), indices in order of decreasing score;
- :func:`roi_align`: ONNX ``RoiAlign`` (opset 16: ``coordinate_transformation_mode='half_pixel'``
  is mmcv's ``aligned=True``; ``sampling_ratio=0`` is adaptive in both);
- :class:`AdaptiveAvgPool2dAsMatmul`: adaptive average pooling as two matrix products, whose
  matrices are computed from the input's size in the graph (UperNet's pyramid pooling).
"""

from typing import Union

import torch
import torch.nn as nn
from torch import Tensor


class _NMS(torch.autograd.Function):
    """Single-class NMS; the eager path is mmcv's, the exported one ONNX's operator."""

    @staticmethod
    def forward(
        ctx, boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold, max_output: int
    ) -> Tensor:
        from mmcv.ops import nms as mmcv_nms

        keep = scores > score_threshold
        inds = keep.nonzero().squeeze(1)
        if inds.numel() == 0:
            return inds
        _, order = mmcv_nms(boxes[inds], scores[inds], iou_threshold)
        return inds[order][:max_output]

    @staticmethod
    def symbolic(g, boxes, scores, iou_threshold, score_threshold, max_output):
        def const(value, dtype=torch.long):
            return g.op('Constant', value_t=torch.tensor(value, dtype=dtype))

        selected = g.op(
            'NonMaxSuppression',
            g.op('Unsqueeze', boxes, const([0])),  # [1, N, 4]
            g.op('Unsqueeze', scores, const([0, 1])),  # [1, 1, N]
            const([max_output]),
            const([iou_threshold], torch.float),
            # a graph input (the detector's score threshold) or a constant
            score_threshold
            if isinstance(score_threshold, torch._C.Value)
            else const([score_threshold], torch.float),
        )  # [K, 3]: (batch, class, box)
        return g.op('Gather', selected, const(2), axis_i=1)


def nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float,
    score_threshold: Union[float, Tensor] = 0.0,
    max_output: int = 1000,
) -> Tensor:
    """The indices (int64, decreasing score) of the boxes ``(N, 4)`` kept, of those whose score is
    above ``score_threshold`` (a number, or a one-element tensor that export makes a graph
    input), at most ``max_output``."""
    if not isinstance(score_threshold, Tensor):
        score_threshold = float(score_threshold)
    return _NMS.apply(boxes, scores, float(iou_threshold), score_threshold, int(max_output)).view(
        -1
    )


def batched_nms(
    boxes: Tensor,
    scores: Tensor,
    groups: Tensor,
    iou_threshold: float,
    score_threshold: Union[float, Tensor] = 0.0,
    max_output: int = 1000,
) -> Tensor:
    """NMS within each group (a class or a level) in one call: the boxes of a group are offset so
    that no two groups overlap, as MMDetection's ``batched_nms`` does."""
    # the largest coordinate, also of no box at all (a graph must not reduce an empty tensor)
    bound = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    offsets = groups.to(boxes.dtype) * (bound + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold, score_threshold, max_output)


class _RoiAlign(torch.autograd.Function):
    """mmcv's RoIAlign (average pooling) on ``rois`` ``(K, 5)``: (batch index, x1, y1, x2, y2)."""

    @staticmethod
    def forward(ctx, feats, rois, output_size, spatial_scale, sampling_ratio, aligned):
        from mmcv.ops import roi_align as mmcv_roi_align

        return mmcv_roi_align(
            feats, rois, output_size, spatial_scale, sampling_ratio, 'avg', aligned
        )

    @staticmethod
    def symbolic(g, feats, rois, output_size, spatial_scale, sampling_ratio, aligned):
        def const(value):
            return g.op('Constant', value_t=torch.tensor(value, dtype=torch.long))

        batch = g.op('Cast', g.op('Gather', rois, const(0), axis_i=1), to_i=7)  # INT64
        boxes = g.op('Gather', rois, const([1, 2, 3, 4]), axis_i=1)
        return g.op(
            'RoiAlign',
            feats,
            boxes,
            batch,
            mode_s='avg',
            output_height_i=output_size[0],
            output_width_i=output_size[1],
            sampling_ratio_i=sampling_ratio,
            spatial_scale_f=spatial_scale,
            coordinate_transformation_mode_s='half_pixel' if aligned else 'output_half_pixel',
        )


def roi_align(
    feats: Tensor,
    rois: Tensor,
    output_size,
    spatial_scale: float,
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> Tensor:
    """RoI features ``(K, C, *output_size)`` of ``feats`` ``(N, C, H, W)``."""
    return _RoiAlign.apply(
        feats, rois, tuple(output_size), float(spatial_scale), int(sampling_ratio), bool(aligned)
    )


class AdaptiveAvgPool2dAsMatmul(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two matrix products, ``P_h @ x @ P_w^T``.

    torch's ONNX exporter cannot export adaptive pooling to sizes that do not divide the input
    (UperNet pools to 1, 2, 3 and 6). Bin ``i`` of ``n`` over ``L`` averages
    ``[floor(i * L / n), ceil((i + 1) * L / n))``, as PyTorch does, so the result is the same;
    the matrices are computed from the input's size, so the exported graph takes any size.
    """

    def __init__(self, output_size):
        super().__init__()
        size = output_size if isinstance(output_size, (tuple, list)) else (output_size,) * 2
        self.output_size = tuple(size)

    @staticmethod
    def _matrix(n: int, length, like: Tensor) -> Tensor:
        """``(n, length)``: row i averages bin i's positions."""
        i = torch.arange(n, device=like.device, dtype=torch.long)
        lo = torch.div(i * length, n, rounding_mode='floor')
        hi = torch.div((i + 1) * length + n - 1, n, rounding_mode='floor')
        j = torch.arange(length, device=like.device, dtype=torch.long)
        inside = (j[None, :] >= lo[:, None]) & (j[None, :] < hi[:, None])
        return inside.to(like.dtype) / (hi - lo).to(like.dtype)[:, None]

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2], x.shape[-1]
        ph = self._matrix(self.output_size[0] or h, h, x)
        pw = self._matrix(self.output_size[1] or w, w, x)
        return torch.matmul(torch.matmul(ph, x), pw.t())


def make_adaptive_pools_exportable(module: nn.Module) -> nn.Module:
    """Replace every ``nn.AdaptiveAvgPool2d`` in ``module`` by :class:`AdaptiveAvgPool2dAsMatmul`,
    in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.AdaptiveAvgPool2d):
            setattr(module, name, AdaptiveAvgPool2dAsMatmul(child.output_size))
        else:
            make_adaptive_pools_exportable(child)
    return module
