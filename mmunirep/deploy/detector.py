"""A two-stage detector's predict path as one traceable module, for ONNX export.

MMDetection's ``predict`` cannot be exported as it is: it loops over images with Python-level
filtering that tracing would freeze to the traced image's sizes, calls mmcv's compiled NMS and
RoIAlign (mmcv's own ONNX domain at best), and works on ``InstanceData`` and image metas. The
functions below are small rewrites of the steps of that path (as mmdeploy's function rewriters,
but explicit): each calls the heads' own modules for the learned parts (convolutions, linear
layers, the prior generator, the box coder's parameters) and redoes only what does not export,
with the same arithmetic. :class:`DetectorForExport` chains them for one image (batch 1):

    image (1, 3, H, W), normalized and padded as the config's data pre-processor does,
    image_shape (2,) int64: (h, w) of the resized image inside the padding,
    score_threshold (1,) float32: the lowest detection score kept (the config's ``score_thr``)
    -> boxes (K, 4) x1 y1 x2 y2 in the input's pixels, scores (K,), labels (K,) int64,
       masks (K, M, M): the probability map of each detection's class over its box (M = 28),
       which the caller pastes into the image (as MMDetection's FCNMaskHead does).

Supported: ``TwoStageDetector`` (Faster / Mask / Cascade (Mask) R-CNN) with an ``RPNHead``,
``StandardRoIHead`` or ``CascadeRoIHead``, ``SingleRoIExtractor`` with RoIAlign, ``BBoxHead``s with
a ``DeltaXYWHBBoxCoder`` and softmax scores, ``FCNMaskHead``; NMS of type ``nms`` (per class, or
``class_agnostic``) with a positive ``max_per_img``. DINO: :mod:`.dino`.
"""

import inspect
import math
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from .dino import DINOForExport, check_dino_supported, is_dino
from .errors import UnsupportedModelError
from .ops import batched_nms, roi_align


def exportable_detector(detector: nn.Module) -> nn.Module:
    """The traceable predict path of ``detector``: :class:`DetectorForExport` for a two-stage
    detector, :class:`~mmunirep.deploy.dino.DINOForExport` for DINO."""
    return DINOForExport(detector) if is_dino(detector) else DetectorForExport(detector)


def check_supported(detector: nn.Module) -> None:
    """Raise :class:`UnsupportedModelError` naming the first part the exporter cannot export."""
    if is_dino(detector):
        check_dino_supported(detector)
    else:
        check_two_stage_supported(detector)


def check_two_stage_supported(detector: nn.Module) -> None:
    """:func:`check_supported` for what :class:`DetectorForExport` takes."""
    from mmdet.models.detectors import TwoStageDetector
    from mmdet.models.roi_heads import CascadeRoIHead, StandardRoIHead

    def refuse(part, what, supported):
        raise UnsupportedModelError(
            f'the detector exporter does not support this {part}: {what} (supported: {supported})'
        )

    if not isinstance(detector, TwoStageDetector):
        refuse(
            'detector',
            type(detector).__name__,
            'two-stage detectors with an RPN and RoI heads (Faster / Mask / Cascade R-CNN), DINO',
        )
    rpn = detector.rpn_head
    if type(rpn).__name__ != 'RPNHead' or not rpn.use_sigmoid_cls:
        refuse('RPN head', type(rpn).__name__, 'RPNHead with sigmoid scores')
    if type(rpn.prior_generator).__name__ != 'AnchorGenerator':
        refuse('prior generator', type(rpn.prior_generator).__name__, 'AnchorGenerator')
    roi = detector.roi_head
    if type(roi) not in (StandardRoIHead, CascadeRoIHead) or roi.with_shared_head:
        refuse('RoI head', type(roi).__name__, 'StandardRoIHead, CascadeRoIHead')
    stages = _stages(roi)
    for extractor, head, mask_extractor, mask_head in stages:
        for part, module in (('RoI extractor', extractor), ('mask RoI extractor', mask_extractor)):
            if module is None:
                continue
            if type(module).__name__ != 'SingleRoIExtractor' or any(
                type(layer).__name__ != 'RoIAlign' or layer.pool_mode != 'avg'
                for layer in module.roi_layers
            ):
                refuse(part, type(module).__name__, "SingleRoIExtractor with RoIAlign ('avg')")
        sigmoid = getattr(head.loss_cls, 'use_sigmoid', False)
        if (
            type(head.bbox_coder).__name__ != 'DeltaXYWHBBoxCoder'
            or sigmoid
            or getattr(head, 'custom_cls_channels', False)
        ):
            refuse(
                'bbox head',
                f'{type(head).__name__} with {type(head.bbox_coder).__name__}',
                'BBoxHead family with DeltaXYWHBBoxCoder and softmax scores',
            )
        if mask_head is not None and type(mask_head).__name__ != 'FCNMaskHead':
            refuse('mask head', type(mask_head).__name__, 'FCNMaskHead')
    for stage, cfg in (('rpn', detector.test_cfg.rpn), ('rcnn', detector.test_cfg.rcnn)):
        if cfg.nms.get('type', 'nms') != 'nms':
            refuse(f'{stage} NMS', cfg.nms.get('type'), "type='nms'")
        # MMDetection reads 0 or less as no limit (and the RPN then drops its last box); ONNX's
        # NonMaxSuppression reads 0 as no box at all
        if cfg.get('max_per_img', 1) <= 0:
            refuse(f'{stage} max_per_img', cfg.max_per_img, 'a positive number of detections')


def _stages(roi_head) -> List[Tuple]:
    """(bbox extractor, bbox head, mask extractor or None, mask head or None) of each stage."""
    from mmdet.models.roi_heads import CascadeRoIHead

    if isinstance(roi_head, CascadeRoIHead):
        n = roi_head.num_stages
        masks = [
            (roi_head.mask_roi_extractor[i], roi_head.mask_head[i])
            if roi_head.with_mask
            else (None, None)
            for i in range(n)
        ]
        return [
            (roi_head.bbox_roi_extractor[i], roi_head.bbox_head[i], *masks[i]) for i in range(n)
        ]
    mask = (roi_head.mask_roi_extractor, roi_head.mask_head) if roi_head.with_mask else (None, None)
    return [(roi_head.bbox_roi_extractor, roi_head.bbox_head, *mask)]


def _at_most(k: int, n):
    """``min(k, n)`` for a size ``n`` that is a tensor while exporting, so that the graph keeps
    it as a function of the input's size instead of the traced image's number."""
    if isinstance(n, Tensor):
        return torch.clamp(torch.tensor(k, dtype=n.dtype), max=n)
    return min(k, n)


def decode_deltas(coder, priors: Tensor, deltas: Tensor, image_shape: Tensor) -> Tensor:
    """``DeltaXYWHBBoxCoder.decode`` with the image size as a tensor.

    Rewritten because MMDetection's ``delta2bbox`` clamps the boxes in place on strided slices
    with the image size from the image's meta (Python numbers, frozen by tracing); this clamps
    with the ``image_shape`` input. ``deltas`` is ``(N, 4 * C)``; returns ``(N, C, 4)``.
    """
    n = priors.shape[0]
    deltas = deltas.reshape(n, -1, 4)
    means = deltas.new_tensor(coder.means)
    stds = deltas.new_tensor(coder.stds)
    deltas = deltas * stds + means
    pxy = ((priors[:, :2] + priors[:, 2:]) * 0.5)[:, None]
    pwh = (priors[:, 2:] - priors[:, :2])[:, None]
    dxy, dwh = deltas[..., :2], deltas[..., 2:]
    # the heads call decode() without it: its default
    wh_ratio_clip = inspect.signature(coder.decode).parameters['wh_ratio_clip'].default
    max_ratio = abs(math.log(wh_ratio_clip))
    if coder.add_ctr_clamp:
        dxy_wh = torch.clamp(pwh * dxy, max=coder.ctr_clamp, min=-coder.ctr_clamp)
        dwh = torch.clamp(dwh, max=max_ratio)
    else:
        dxy_wh = pwh * dxy
        dwh = dwh.clamp(min=-max_ratio, max=max_ratio)
    gxy = pxy + dxy_wh
    gwh = pwh * dwh.exp()
    boxes = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)
    if coder.clip_border:
        size = image_shape.flip(0).to(boxes.dtype).repeat(2)  # (w, h, w, h)
        boxes = torch.minimum(torch.clamp(boxes, min=0), size)
    return boxes


def rpn_proposals(rpn_head, feats: Tuple[Tensor], image_shape: Tensor, cfg) -> Tensor:
    """``RPNHead.predict`` for one image: ``(P, 4)`` proposals.

    Rewritten because MMDetection keeps the top ``nms_pre`` of each level and drops degenerate
    boxes with Python-level tests of the sizes (``if 0 < nms_pre < scores.shape[0]``,
    ``valid_mask.all()``), and runs mmcv's NMS per level; here TopK's k and the anchors follow
    the feature maps' sizes in the graph, degenerate boxes get a score of 0 (which the NMS's score
    threshold drops), and one NMS call keeps the levels apart as ``batched_nms`` does.
    """
    cls_scores, bbox_preds = rpn_head(feats)
    generator = rpn_head.prior_generator
    all_boxes, all_scores, all_levels = [], [], []
    for level, (cls_score, bbox_pred) in enumerate(zip(cls_scores, bbox_preds)):
        scores = cls_score[0].permute(1, 2, 0).reshape(-1).sigmoid()
        deltas = bbox_pred[0].permute(1, 2, 0).reshape(-1, 4)
        anchors = generator.single_level_grid_priors(
            cls_score.shape[-2:], level, dtype=deltas.dtype, device=deltas.device
        )
        if cfg.get('nms_pre', -1) > 0:
            scores, keep = scores.topk(_at_most(cfg.nms_pre, scores.shape[0]))
            deltas, anchors = deltas[keep], anchors[keep]
        all_boxes.append(decode_deltas(rpn_head.bbox_coder, anchors, deltas, image_shape)[:, 0])
        all_scores.append(scores)
        all_levels.append(torch.full_like(scores, level, dtype=torch.long))
    boxes, scores, levels = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_levels)
    if cfg.get('min_bbox_size', -1) >= 0:
        wh = boxes[:, 2:] - boxes[:, :2]
        valid = (wh > cfg.min_bbox_size).all(dim=1)
        scores = torch.where(valid, scores, torch.zeros_like(scores))
    keep = batched_nms(boxes, scores, levels, cfg.nms.iou_threshold, 0.0, cfg.max_per_img)
    return boxes[keep]


def extract_roi_features(extractor, feats: Tuple[Tensor], rois: Tensor) -> Tensor:
    """``SingleRoIExtractor.forward``: each RoI's features from the level its size maps to.

    Rewritten because MMDetection calls mmcv's RoIAlign on each level's RoIs under a Python test
    of their count; here each level's RoIs are gathered and scattered back in the graph
    (NonZero, Gather, RoiAlign, ScatterND), with the same level mapping (``map_roi_levels``).
    """
    feats = feats[: extractor.num_inputs]
    layer = extractor.roi_layers[0]
    levels = extractor.map_roi_levels(rois, len(feats))
    out = rois.new_zeros((rois.shape[0], extractor.out_channels, *layer.output_size))
    for level, (feat, layer) in enumerate(zip(feats, extractor.roi_layers)):
        inds = (levels == level).nonzero().squeeze(1)
        level_feats = roi_align(
            feat,
            rois[inds],
            layer.output_size,
            layer.spatial_scale,
            layer.sampling_ratio,
            layer.aligned,
        )
        out = out.index_put((inds,), level_feats)
    return out


def _rois(boxes: Tensor) -> Tensor:
    """``bbox2roi`` for one image: (batch index 0, x1, y1, x2, y2)."""
    return torch.cat([boxes.new_zeros((boxes.shape[0], 1)), boxes], dim=1)


def _class_boxes(
    head, rois: Tensor, bbox_pred: Tensor, image_shape: Tensor, labels: Optional[Tensor] = None
) -> Tensor:
    """The boxes a bbox head regresses: ``(N, C, 4)`` (``C = 1`` if class-agnostic), or with
    ``labels`` each RoI's box of its label, ``(N, 4)`` (``BBoxHead.regress_by_class``)."""
    boxes = decode_deltas(head.bbox_coder, rois[:, 1:], bbox_pred, image_shape)
    if labels is None or head.reg_class_agnostic:
        return boxes if labels is None else boxes[:, 0]
    return boxes[torch.arange(boxes.shape[0]), labels]


def roi_detections(
    roi_head,
    feats: Tuple[Tensor],
    proposals: Tensor,
    image_shape: Tensor,
    cfg,
    score_threshold: Optional[Tensor] = None,
):
    """``StandardRoIHead`` / ``CascadeRoIHead.predict_bbox`` then ``multiclass_nms`` for one
    image: ``(boxes (K, 4), scores (K,), labels (K,))``.

    Rewritten for the cascade's per-image Python loops, mmcv's NMS, and ``multiclass_nms``'s
    boolean filtering; the arithmetic is MMDetection's: each stage's raw class scores are
    averaged over the stages, each stage but the last refines the RoIs with the box of its
    highest non-background class, the last stage's boxes are the detections, NMS per class
    (over all classes at once with ``nms.class_agnostic``).
    """
    stages = _stages(roi_head)
    rois = _rois(proposals)
    stage_scores = []
    for i, (extractor, head, _, _) in enumerate(stages):
        cls_score, bbox_pred = head(extract_roi_features(extractor, feats, rois))
        stage_scores.append(cls_score)
        if i < len(stages) - 1:
            labels = cls_score[:, :-1].argmax(dim=1)
            rois = _rois(_class_boxes(head, rois, bbox_pred, image_shape, labels))
    head = stages[-1][1]
    scores = (sum(stage_scores) / len(stage_scores)).softmax(dim=-1)[:, :-1]
    num_classes = scores.shape[1]
    boxes = _class_boxes(head, rois, bbox_pred, image_shape).expand(-1, num_classes, -1)
    labels = torch.arange(num_classes, device=scores.device).expand_as(scores)
    boxes, scores, labels = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
    threshold = cfg.score_thr if score_threshold is None else score_threshold
    groups = torch.zeros_like(labels) if cfg.nms.get('class_agnostic', False) else labels
    keep = batched_nms(boxes, scores, groups, cfg.nms.iou_threshold, threshold, cfg.max_per_img)
    return boxes[keep], scores[keep], labels[keep]


def mask_probabilities(roi_head, feats: Tuple[Tensor], boxes: Tensor, labels: Tensor) -> Tensor:
    """The mask heads' probabilities of each detection's class, ``(K, M, M)``: the sigmoid of the
    mask head, averaged over the cascade's stages (``merge_aug_masks``), before pasting.

    Rewritten because MMDetection pastes the masks into the image in the same step, in a Python
    loop over chunks of detections, and returns binary masks at the image's size.
    """
    rois = _rois(boxes)
    probabilities = []
    for _, _, extractor, head in _stages(roi_head):
        logits = head(extract_roi_features(extractor, feats, rois))
        probabilities.append(logits.sigmoid())
    merged = sum(probabilities) / len(probabilities)
    if head.class_agnostic:
        return merged[:, 0]
    return merged[torch.arange(merged.shape[0]), labels]


class DetectorForExport(nn.Module):
    """A two-stage detector's whole predict path for one image, as traceable tensor operations
    (see this module's docstring for the inputs and outputs)."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        check_two_stage_supported(detector)
        self.detector = detector
        self.with_mask = detector.roi_head.with_mask
        self.num_classes = _stages(detector.roi_head)[-1][1].num_classes  # the last box head's

    def postprocess_settings(self) -> dict:
        """What the exported file's metadata records of the post-processing (``test_cfg.rcnn``):
        the default score threshold, the detections kept, the masks' binarization threshold."""
        rcnn = self.detector.test_cfg.rcnn
        settings = dict(score_thr=float(rcnn.score_thr), max_per_img=int(rcnn.max_per_img))
        if self.with_mask:
            settings.update(mask_thr_binary=float(rcnn.mask_thr_binary))
        return settings

    def forward(self, image: Tensor, image_shape: Tensor, score_threshold: Optional[Tensor] = None):
        """``score_threshold`` (1,): the lowest detection score kept (default: the config's
        ``test_cfg.rcnn.score_thr``); an input of the exported graph, so that one file serves
        any threshold and the export check can compare the best detections of any model."""
        detector, cfg = self.detector, self.detector.test_cfg
        feats = detector.extract_feat(image)
        proposals = rpn_proposals(detector.rpn_head, feats, image_shape, cfg.rpn)
        boxes, scores, labels = roi_detections(
            detector.roi_head, feats, proposals, image_shape, cfg.rcnn, score_threshold
        )
        if not self.with_mask:
            return boxes, scores, labels
        return boxes, scores, labels, mask_probabilities(detector.roi_head, feats, boxes, labels)
