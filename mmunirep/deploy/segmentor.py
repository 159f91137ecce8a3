"""A segmentor and a backbone as traceable modules, for ONNX export."""

import inspect

import torch.nn as nn
import torch.nn.functional as F
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
    if list(inspect.signature(head.forward).parameters) != ['inputs']:
        refuse(
            'decode head',
            f'{type(head).__name__}, whose forward takes more than the features',
            'heads that map the features to logits, such as UPerHead or FCNHead',
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


class SegmentorForExport(nn.Module):
    """image ``(N, 3, H, W)``, normalized as the config's data pre-processor does -> class
    logits ``(N, num_classes, H, W)`` (MMSegmentation's ``EncoderDecoder`` in whole-image mode,
    before its resize to the original image). Its adaptive pooling (UperNet's pyramid pooling)
    is rewritten as matrix products that follow the input's size, so H and W stay dynamic."""

    def __init__(self, segmentor: nn.Module):
        super().__init__()
        check_segmentor_supported(segmentor)
        self.segmentor = make_adaptive_pools_exportable(segmentor)

    def forward(self, image: Tensor) -> Tensor:
        head = self.segmentor.decode_head
        logits = head(self.segmentor.extract_feat(image))
        return F.interpolate(
            logits, size=image.shape[-2:], mode='bilinear', align_corners=head.align_corners
        )


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
