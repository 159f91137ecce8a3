"""Deployment: ONNX-exportable forms of detectors, segmentors and the backbone, and the
preprocessing they need, stored in the exported file."""

from .detector import DetectorForExport, UnsupportedModelError, check_supported
from .ops import AdaptiveAvgPool2dAsMatmul, make_adaptive_pools_exportable

__all__ = [
    'DetectorForExport',
    'UnsupportedModelError',
    'check_supported',
    'AdaptiveAvgPool2dAsMatmul',
    'make_adaptive_pools_exportable',
]
