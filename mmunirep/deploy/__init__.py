"""Deployment: ONNX-exportable forms of detectors, segmentors and the backbone, and the
preprocessing they need, stored in the exported file."""

from .detector import DetectorForExport, check_supported, exportable_detector
from .dino import DINOForExport
from .errors import UnsupportedModelError
from .ops import AdaptiveAvgPool2dAsMatmul, make_adaptive_pools_exportable

__all__ = [
    'DetectorForExport',
    'DINOForExport',
    'exportable_detector',
    'UnsupportedModelError',
    'check_supported',
    'AdaptiveAvgPool2dAsMatmul',
    'make_adaptive_pools_exportable',
]
