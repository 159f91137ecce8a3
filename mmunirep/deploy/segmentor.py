"""A segmentor and a backbone as traceable modules, for ONNX export."""

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .ops import make_adaptive_pools_exportable


class SegmentorForExport(nn.Module):
    """image ``(N, 3, H, W)``, normalized as the config's data pre-processor does -> class
    logits ``(N, num_classes, H, W)`` (MMSegmentation's ``EncoderDecoder`` in whole-image mode,
    before its resize to the original image). Its adaptive pooling (UperNet's pyramid pooling)
    is rewritten as matrix products that follow the input's size, so H and W stay dynamic."""

    def __init__(self, segmentor: nn.Module):
        super().__init__()
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
