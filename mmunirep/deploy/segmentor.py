"""A segmentor and a backbone as traceable modules, for ONNX export."""

import inspect

import torch.nn as nn
from torch import Tensor

from .errors import UnsupportedModelError
from .ops import make_adaptive_pools_exportable


def check_segmentor_supported(segmentor: nn.Module) -> None:
    """Raise :class:`UnsupportedModelError` naming the first part of an MMSegmentation model that
    :class:`SegmentorForExport` would not export as MMSegmentation predicts with it."""
    from mmseg.models.segmentors import EncoderDecoder

    def refuse(part, what, supported):
        raise UnsupportedModelError(
            f'the segmentor exporter does not support this {part}: {what} (supported: {supported})'
        )

    if type(segmentor) is not EncoderDecoder:
        refuse('segmentor', type(segmentor).__name__, 'EncoderDecoder')
    head = segmentor.decode_head
    if not is_mask2former(head) and list(inspect.signature(head.forward).parameters) != ['inputs']:
        refuse(
            'decode head',
            f'{type(head).__name__}, whose forward takes more than the features',
            'heads that map the features to logits, such as UPerHead or FCNHead, and '
            'Mask2FormerHead',
        )
    if head.out_channels == 1:
        refuse(
            'decode head',
            f'{type(head).__name__} with out_channels=1 (a sigmoid and a threshold per pixel)',
            'one logit per class',
        )
    mode = (segmentor.test_cfg or {}).get('mode', 'whole')
    if mode != 'whole':
        refuse('test mode', repr(mode), "'whole' (--cfg-options model.test_cfg.mode=whole)")


def is_mask2former(head: nn.Module) -> bool:
    """Whether ``head`` is MMSegmentation's Mask2Former head."""
    from mmseg.models.decode_heads import Mask2FormerHead

    return isinstance(head, Mask2FormerHead)


class SegmentorForExport(nn.Module):
    """image ``(N, 3, H, W)``, normalized as the config's data pre-processor does -> class
    logits ``(N, num_classes, H, W)`` (MMSegmentation's ``EncoderDecoder`` in whole-image mode,
    before its resize to the original image). Its adaptive pooling (UperNet's pyramid pooling)
    is rewritten as matrix products that follow the input's size, so H and W stay dynamic.

    The decode head predicts as in MMSegmentation, from an image meta whose size is the input's
    own: a tensor while tracing, so that the head's resize to it follows the input's size in the
    graph. Mask2Former's "logits" are its class probabilities weighted by its mask probabilities
    and summed over the queries, which MMSegmentation also resizes and takes the arg-max of."""

    def __init__(self, segmentor: nn.Module):
        super().__init__()
        check_segmentor_supported(segmentor)
        self.segmentor = make_adaptive_pools_exportable(segmentor)

    def forward(self, image: Tensor) -> Tensor:
        size = image.shape[-2:]  # the padded input's, as MMSegmentation's pad_shape
        meta = dict(img_shape=size, pad_shape=size)
        feats = self.segmentor.extract_feat(image)
        return self.segmentor.decode_head.predict(feats, [meta], self.segmentor.test_cfg)


class BackboneForExport(nn.Module):
    """image ``(N, 3, H, W)`` -> the backbone's multi-scale features, as a tuple."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, image: Tensor):
        return tuple(self.backbone(image))


def backbone_export_axes(num_features: int) -> tuple:
    """The output names of an exported backbone with ``num_features`` feature maps, and the axes
    its export leaves dynamic: the batch, height and width of the input and of every map."""
    outputs = [f'feat{i}' for i in range(num_features)]
    axes = {'input': {0: 'batch', 2: 'height', 3: 'width'}}
    axes.update({o: {0: 'batch', 2: f'{o}_h', 3: f'{o}_w'} for o in outputs})
    return outputs, axes
