"""Normalization layers of UniRepLKNet: BatchNorm from an mmcv-style config, the channels-first
LayerNorm of the stem, down-sampling layers and outputs, and GRN with its fp32 spatial norms.

Plain torch and timm, so that the backbone needs no mmcv."""

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d


def build_batch_norm(norm_cfg: dict, channels: int) -> nn.Module:
    """BN or SyncBN from an mmcv-style ``norm_cfg``.

    Written here rather than taken from ``mmcv.cnn.build_norm_layer`` so that the backbone needs
    no mmcv (it is timed on machines that have only torch).
    """
    cfg = dict(norm_cfg)
    layer_type = cfg.pop('type', 'BN')
    requires_grad = cfg.pop('requires_grad', True)
    unknown = set(cfg) - {'eps', 'momentum'}
    if unknown:
        raise ValueError(
            f'norm_cfg accepts type, eps, momentum and requires_grad; got {sorted(unknown)}'
        )
    if layer_type in ('BN', 'BN2d'):
        layer = nn.BatchNorm2d(channels, **cfg)
    elif layer_type in ('SyncBN', 'MMSyncBN'):
        layer = nn.SyncBatchNorm(channels, **cfg)
    else:
        raise ValueError(f"norm_cfg type must be 'BN' or 'SyncBN', got {layer_type!r}")
    for p in layer.parameters():
        p.requires_grad = requires_grad
    return layer


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """fp16 and bf16 tensors as fp32; fp32 and fp64 ones as they are."""
    return x.float() if x.element_size() < 4 else x


def spatial_l2_norm(x: torch.Tensor) -> torch.Tensor:
    """The L2 norm over H and W of an NHWC map, ``(N, 1, 1, C)``, computed in fp32 at least:
    under fp16 autocast the sum of squares of a large map overflows (> 65504).

    Written as the root of a sum of squares over the flattened ``H * W`` dimension: ``torch.norm``
    over the two middle dimensions of an NHWC map is several times slower on the CPU, and a sum
    over those two dimensions slower too.
    """
    x = at_least_fp32(x)
    n, h, w, c = x.shape
    flat = x.reshape(n, h * w, c)
    return (flat * flat).sum(dim=1).sqrt().reshape(n, 1, 1, c)


def pooled_l2_norm(x: torch.Tensor) -> torch.Tensor:
    """The L2 norm over H and W of an NCHW map, ``(N, C, 1, 1)``, in fp32 at least, for the ONNX
    export.

    Written as the root of the global average pool of the squares times ``H * W``: the global
    average pool is the one spatial reduction that onnxruntime runs in its blocked-channel
    (NCHWc) layout, so the map is not reordered for it.
    """
    x = at_least_fp32(x)
    return (F.adaptive_avg_pool2d(x * x, 1) * (x.shape[2] * x.shape[3])).sqrt()


class ChannelsFirstLayerNorm(LayerNorm2d):
    """timm's ``LayerNorm2d`` (the authors' channels-first LayerNorm); in an ONNX export, a
    LayerNormalization without affine parameters followed by the affine part as a 1x1 depthwise
    convolution.

    Why: onnxruntime keeps a convolution's output in its blocked-channel (NCHWc) layout, so the
    stage after a down-sampling norm starts its residual stream in that layout, and each block's
    residual sum runs inside the block's last convolution rather than on reordered maps.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.onnx.is_in_onnx_export():
            return super().forward(x)
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, eps=self.eps)
        channels = self.weight.numel()
        weight = self.weight.reshape(channels, 1, 1, 1)
        return F.conv2d(x.permute(0, 3, 1, 2), weight, self.bias, groups=channels)


class GRN(nn.Module):
    """Global Response Normalization on NHWC input (ConvNeXt V2).

    Written here rather than using ``timm.layers.GlobalResponseNorm`` because the authors'
    checkpoints store ``gamma`` / ``beta`` of shape ``[1, 1, 1, C]`` and the deploy structure drops
    ``beta`` (folded into the next linear layer).
    """

    def __init__(self, dim: int, use_bias: bool = True):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        if use_bias:
            self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    @property
    def use_bias(self) -> bool:
        return hasattr(self, 'beta')

    def channel_scale(self, x: torch.Tensor, channels_first: bool = False) -> torch.Tensor:
        """The per-image channel factors ``1 + gamma * N(x)``, ``(N, 1, 1, C)`` for an NHWC map
        (``(N, C, 1, 1)`` for an NCHW one if ``channels_first``): GRN is
        ``x * channel_scale(x) + beta``."""
        if channels_first:
            gx, gamma, channel_dim = pooled_l2_norm(x), self.gamma.reshape(1, -1, 1, 1), 1
        else:
            gx, gamma, channel_dim = spatial_l2_norm(x), self.gamma, -1
        nx = (gx / (gx.mean(dim=channel_dim, keepdim=True) + 1e-6)).to(x.dtype)
        return gamma * nx + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x * self.channel_scale(x)
        return out + self.beta if self.use_bias else out
