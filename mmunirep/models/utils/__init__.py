from .bn_recompute import KeepBatchNormStatistics
from .inference import scaled_linear, takes_inference_path
from .layout import NCHWtoNHWC, NHWCtoNCHW
from .norm import (
    GRN,
    ChannelsFirstLayerNorm,
    at_least_fp32,
    build_batch_norm,
    pooled_l2_norm,
    spatial_l2_norm,
)
from .reparam import (
    DILATED_BRANCHES,
    DilatedReparamBlock,
    dilated_to_dense,
    fuse_bn,
    keep_trainable,
    make_depthwise_conv,
)
from .se_layer import SEBlock

__all__ = [
    'build_batch_norm',
    'at_least_fp32',
    'spatial_l2_norm',
    'pooled_l2_norm',
    'ChannelsFirstLayerNorm',
    'GRN',
    'SEBlock',
    'DILATED_BRANCHES',
    'fuse_bn',
    'dilated_to_dense',
    'make_depthwise_conv',
    'keep_trainable',
    'DilatedReparamBlock',
    'NCHWtoNHWC',
    'NHWCtoNCHW',
    'takes_inference_path',
    'scaled_linear',
    'KeepBatchNormStatistics',
]
