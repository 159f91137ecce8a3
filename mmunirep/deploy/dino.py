"""A DINO detector's predict path as one traceable module, for ONNX export.

MMDetection 3's transformer path traces with the image's size kept dynamic: the levels' sizes
are read with ``torch._shape_as_tensor``, and while exporting ``pre_transformer`` leaves out the
padding masks. Two steps still do not export as they are, and are rewritten here:

- the data samples: ``pre_transformer`` reads the batch's and the image's sizes from them; the
  module passes a sample whose sizes are the input's, so that in eager mode too MMDetection takes
  the branch without padding masks, which is the branch it takes while exporting;
- the post-processing (``_predict_by_feat_single``), which scales and clamps the boxes in place
  on strided slices with the image size from its meta (Python numbers, frozen by tracing).

An image is never padded: with ``pad_size_divisor=1`` and one image per batch, as MMDetection's
DINO configs test, the padding masks that the branch leaves out are empty, so the exported graph
predicts what MMDetection predicts. Inputs and outputs are those of
:class:`~mmunirep.deploy.detector.DetectorForExport`, without masks.
"""

from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from .errors import UnsupportedModelError


def is_dino(detector: nn.Module) -> bool:
    """Whether ``detector`` is MMDetection's DINO."""
    from mmdet.models.detectors import DINO

    return isinstance(detector, DINO)


def check_dino_supported(detector: nn.Module) -> None:
    """Raise :class:`UnsupportedModelError` naming the first part of a DINO detector whose
    prediction :class:`DINOForExport` would not repeat."""

    def refuse(part, what, supported):
        raise UnsupportedModelError(
            f'the detector exporter does not support this {part}: {what} (supported: {supported})'
        )

    head = detector.bbox_head
    if not getattr(head.loss_cls, 'use_sigmoid', False):
        refuse('bbox head', f'{type(head).__name__} with softmax scores', 'sigmoid scores')
    divisor = getattr(detector.data_preprocessor, 'pad_size_divisor', 1)
    if divisor != 1:
        # the padding masks would then hide the padding from the transformer; the exported
        # graph has none, as MMDetection's export branch
        refuse(
            'data pre-processor',
            f'pad_size_divisor={divisor}',
            'pad_size_divisor=1: DINO takes the image unpadded',
        )
    max_per_img = (head.test_cfg or {}).get('max_per_img', detector.num_queries)
    if not 0 < max_per_img <= detector.num_queries * head.num_classes:
        refuse(
            'max_per_img',
            max_per_img,
            f'a positive number up to the queries times the classes, '
            f'{detector.num_queries * head.num_classes}',
        )


def _unpadded_sample(image: Tensor):
    """A data sample that tells ``pre_transformer`` that ``image`` is not padded."""
    from mmdet.structures import DetDataSample

    size = tuple(image.shape[-2:])
    return DetDataSample(metainfo=dict(batch_input_shape=size, img_shape=size))


def dino_detections(
    num_classes: int,
    max_per_img: int,
    cls_score: Tensor,
    bbox_pred: Tensor,
    image_shape: Tensor,
    score_threshold: Tensor,
):
    """``DeformableDETRHead._predict_by_feat_single`` (sigmoid scores) for one image:
    the ``max_per_img`` best (query, class) pairs, their boxes from normalized (cx, cy, w, h) to
    x1 y1 x2 y2 in the image's pixels, clamped to the image, then those scoring above
    ``score_threshold`` (MMDetection keeps every one: threshold 0)."""
    scores, indexes = cls_score.sigmoid().reshape(-1).topk(max_per_img)
    labels = indexes % num_classes
    cx, cy, w, h = bbox_pred[indexes // num_classes].unbind(-1)
    boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
    size = image_shape.flip(0).to(boxes.dtype).repeat(2)  # (w, h, w, h)
    boxes = torch.minimum(torch.clamp(boxes * size, min=0), size)
    keep = (scores > score_threshold).nonzero().squeeze(1)
    return boxes[keep], scores[keep], labels[keep]


class DINOForExport(nn.Module):
    """A DINO detector's predict path for one unpadded image (see this module's
    docstring): image, image_shape, score_threshold -> boxes, scores, labels."""

    with_mask = False

    def __init__(self, detector: nn.Module):
        super().__init__()
        check_dino_supported(detector)
        self.detector = detector
        self.num_classes = detector.bbox_head.num_classes
        test_cfg = detector.bbox_head.test_cfg or {}
        self.max_per_img = int(test_cfg.get('max_per_img', detector.num_queries))

    def postprocess_settings(self) -> dict:
        """What the exported file's metadata records of the post-processing: MMDetection keeps
        every one of the ``max_per_img`` detections (score threshold 0)."""
        return dict(score_thr=0.0, max_per_img=self.max_per_img)

    def forward(self, image: Tensor, image_shape: Tensor, score_threshold: Optional[Tensor] = None):
        detector = self.detector
        if score_threshold is None:
            score_threshold = image.new_zeros(1)
        feats = detector.extract_feat(image)
        outputs = detector.forward_transformer(feats, [_unpadded_sample(image)])
        cls_scores, bbox_preds = detector.bbox_head(outputs['hidden_states'], outputs['references'])
        return dino_detections(
            self.num_classes,
            self.max_per_img,
            cls_scores[-1][0],
            bbox_preds[-1][0],
            image_shape,
            score_threshold,
        )
