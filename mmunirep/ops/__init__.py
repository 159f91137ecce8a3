from .depthwise_conv import (
    DepthwiseConv2d,
    DepthwiseConv2dFunction,
    DepthWiseConv2dImplicitGEMM,
    depthwise_conv2d,
    ext_available,
    missing_kernels,
)

__all__ = [
    'DepthwiseConv2d',
    'DepthWiseConv2dImplicitGEMM',
    'DepthwiseConv2dFunction',
    'depthwise_conv2d',
    'ext_available',
    'missing_kernels',
]
