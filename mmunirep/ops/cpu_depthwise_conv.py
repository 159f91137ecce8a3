"""Stride-1 "same" depthwise convolution on the CPU, around the slow cases of its kernels.

oneDNN's depthwise kernel for channels-last maps (``brdgmm_dw``) runs kernels 13 wide, the large
kernel of every UniRepLKNet, at about a third of the rate at which it runs kernels 15 wide
(``benchmarks/cpu_depthwise_benchmark.py``). :func:`same_depthwise_conv2d` therefore runs a
13-wide kernel with a zero column on each side, which gives the same sums up to fp32 rounding.

It does so only where that was measured faster: fp32 inference on a channels-last map. Elsewhere
it is the plain convolution: an NCHW map (oneDNN's NCHW depthwise kernel takes no 15-wide kernel
and falls back to a many times slower one), a pass that records gradients (the backward is
slower), other dtypes, tracing (FLOP counting, ONNX export) and ``torch.compile``.

In an ONNX export, large kernels (:data:`SEPARATELY_PADDED_KERNEL` and up) take their zero padding
from a convolution of its own: onnxruntime's blocked-layout depthwise kernel handles the outputs
whose window overlaps the padding more slowly than the others, and with a large kernel on a small
map those are most of them (``benchmarks/results/cpu.md``).
"""

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

# kernel width -> the wider one that oneDNN runs faster
WIDER_KERNELS = {13: 15}
# in an ONNX export, kernels at least this large are padded by a convolution of their own
SEPARATELY_PADDED_KERNEL = 9


def takes_wider_kernel(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`same_depthwise_conv2d` runs ``weight`` zero-padded to a wider kernel."""
    if weight.size(-1) not in WIDER_KERNELS or x.device.type != 'cpu':
        return False
    if x.dtype != torch.float32 or weight.dtype != torch.float32 or x.dim() != 4:
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False
    # a map that is channels-last and not also plain NCHW (as a 1x1 map or a single channel is)
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def same_depthwise_conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Depthwise conv of ``x`` (N, C, H, W) with an odd ``weight`` (C, 1, kh, kw), stride 1,
    padding (kh // 2, kw // 2): ``F.conv2d``'s result, faster on the CPU where the module
    docstring says."""
    k_h, k_w = weight.shape[-2:]
    if takes_wider_kernel(x, weight):
        extra = (WIDER_KERNELS[k_w] - k_w) // 2
        weight = F.pad(weight, (extra, extra))
        k_w = weight.size(-1)
    return F.conv2d(x, weight, bias, padding=(k_h // 2, k_w // 2), groups=weight.size(0))


def zero_pad_as_conv(x: torch.Tensor, weight: torch.Tensor, pad_h: int, pad_w: int):
    """``x`` zero-padded by ``pad_h`` rows and ``pad_w`` columns on each side, written as a 1x1
    depthwise convolution by ones with that padding (``weight``: the depthwise weight that
    follows, for the channel count). onnxruntime runs it in its blocked-channel layout; a ``Pad``
    node would take the map out of that layout, or be folded back into the next convolution."""
    ones = torch.ones_like(weight[:, :, :1, :1])
    return F.conv2d(x, ones, padding=(pad_h, pad_w), groups=weight.size(0))


class SameDepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same state dict) for a depthwise, stride-1, "same"-padded conv that runs
    through :func:`same_depthwise_conv2d`, and in an ONNX export with a large kernel after
    :func:`zero_pad_as_conv`.

    Args:
        channels (int): input = output channels (= groups).
        kernel_size (int): odd kernel size.
        bias (bool): whether the conv has a bias.
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool = False):
        if kernel_size % 2 != 1:
            raise ValueError(f'{type(self).__name__} needs an odd kernel_size, got {kernel_size}')
        super().__init__(
            channels,
            channels,
            kernel_size,
            stride=1,
            padding=kernel_size // 2,
            dilation=1,
            groups=channels,
            bias=bias,
        )

    def _is_same_depthwise(self) -> bool:
        k_h, k_w = self.kernel_size
        return (
            (self.stride, self.dilation, self.padding) == ((1, 1), (1, 1), (k_h // 2, k_w // 2))
            and self.groups == self.in_channels == self.out_channels
            and self.padding_mode == 'zeros'
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._is_same_depthwise():  # attributes changed after construction
            return super().forward(x)
        if torch.onnx.is_in_onnx_export() and max(self.kernel_size) >= SEPARATELY_PADDED_KERNEL:
            x = zero_pad_as_conv(x, self.weight, *self.padding)
            return F.conv2d(x, self.weight, self.bias, groups=self.groups)
        return same_depthwise_conv2d(x, self.weight, self.bias)
