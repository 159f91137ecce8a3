from .depthwise_conv import DepthWiseConv2dImplicitGEMM, ext_available

__all__ = ['DepthWiseConv2dImplicitGEMM', 'ext_available']
