from .cpu_depthwise_conv import SameDepthwiseConv2d, same_depthwise_conv2d
from .depthwise_conv import (
    DepthwiseConv2d,
    DepthwiseConv2dFunction,
    DepthWiseConv2dImplicitGEMM,
    depthwise_conv2d,
    ext_available,
    missing_kernels,
)
from .onednn_linear import cpu_linear, takes_onednn_linear

__all__ = [
    'DepthwiseConv2d',
    'DepthWiseConv2dImplicitGEMM',
    'DepthwiseConv2dFunction',
    'SameDepthwiseConv2d',
    'cpu_linear',
    'depthwise_conv2d',
    'ext_available',
    'missing_kernels',
    'same_depthwise_conv2d',
    'takes_onednn_linear',
]
