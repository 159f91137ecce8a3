"""Large-kernel depthwise convolution ("iGEMM" in the UniRepLKNet paper's code).

Three layers, as in mmcv's ops: the compiled ``mmunirep._ext`` (``ops/csrc``: bindings, CUDA
kernels, CPU path), the autograd :class:`DepthwiseConv2dFunction` (AMP-aware), and the module
:class:`DepthWiseConv2dImplicitGEMM`, an ``nn.Conv2d`` subclass with the same state dict and
truthful attributes (``padding == kernel_size // 2``, ``groups == channels``).

The module runs the CUDA kernels for CUDA inputs in fp32 / fp16 / bf16 / fp64 (NCHW or
channels_last) when the extension is built; anything else (a CPU tensor, a missing extension, an
unsupported dtype) takes ``F.conv2d`` with the same result and warns once how to build the op.
"""
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

try:  # the compiled extension is optional: never let its absence break the fallback
    from mmunirep import _ext  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the build
    _ext = None

_warned = False
MAX_KERNEL = 31
FAST_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

BUILD_HINT = ('mmunirep\'s CUDA depthwise op is not used; falling back to F.conv2d. On a machine '
              'with nvcc and a CUDA build of torch, build it with '
              '`FORCE_CUDA=1 pip install --no-build-isolation -e .` (README, "The op").')


def ext_available() -> bool:
    """Whether the compiled extension was built with CUDA and imports."""
    return _ext is not None and getattr(_ext, 'with_cuda', False)


def _warn_fallback_once(reason: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f'{BUILD_HINT} ({reason})', stacklevel=3)


class DepthwiseConv2dFunction(torch.autograd.Function):
    """``y = depthwise_conv2d(x, w) + b`` on contiguous NCHW tensors of one dtype."""

    @staticmethod
    @torch.amp.custom_fwd(device_type='cuda')
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _ext.depthwise_conv2d_forward(x, weight, bias)

    @staticmethod
    @torch.amp.custom_bwd(device_type='cuda')
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x, grad_w, grad_b = _ext.depthwise_conv2d_backward(
            grad_out.contiguous(), x, weight, need_x, need_w, need_b and ctx.has_bias)
        return (grad_x if need_x else None, grad_w if need_w else None,
                grad_b if need_b and ctx.has_bias else None)


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    """Depthwise conv, stride 1, padding k // 2, on the compiled kernels. ``x``: NCHW or
    channels_last; the output keeps the input's memory format. Under autocast it computes in the
    autocast dtype, as ``F.conv2d`` does (the input, weight and bias are cast to it); otherwise
    the weight and bias follow the input's dtype."""
    if torch.is_autocast_enabled(x.device.type):
        x = x.to(torch.get_autocast_dtype(x.device.type))
    channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last)
    x_c = x.contiguous()
    weight = weight.to(x.dtype).contiguous()
    bias = bias.to(x.dtype).contiguous() if bias is not None else None
    y = DepthwiseConv2dFunction.apply(x_c, weight, bias)
    return y.contiguous(memory_format=torch.channels_last) if channels_last else y


class DepthWiseConv2dImplicitGEMM(nn.Conv2d):
    """Depthwise ``k x k`` convolution, stride 1, "same" padding; NCHW in and out.

    Args:
        channels (int): input = output channels (= groups).
        kernel_size (int): odd kernel size, at most 31 for the CUDA kernels.
        bias (bool): whether the conv has a bias.
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool = False):
        if kernel_size % 2 != 1:
            raise ValueError(f'DepthWiseConv2dImplicitGEMM needs an odd kernel_size, got {kernel_size}')
        super().__init__(channels, channels, kernel_size, stride=1, padding=kernel_size // 2,
                         dilation=1, groups=channels, bias=bias)

    def _fast_path_refusal(self, x: torch.Tensor):
        if not x.is_cuda:
            return 'input on the CPU'
        if not ext_available():
            return 'extension not built'
        if x.dtype not in FAST_DTYPES or x.dim() != 4:
            return f'unsupported input {x.dtype} {x.dim()}-D'
        if self.kernel_size[0] > MAX_KERNEL or self.kernel_size[0] != self.kernel_size[1]:
            return f'kernel {self.kernel_size} beyond {MAX_KERNEL}'
        if (self.stride, self.dilation, self.padding) != ((1, 1), (1, 1), (
                self.kernel_size[0] // 2, self.kernel_size[1] // 2)) or \
                self.groups != self.in_channels or self.in_channels != self.out_channels:
            return 'attributes changed after construction'
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        refusal = self._fast_path_refusal(x)
        if refusal is None:
            return depthwise_conv2d(x, self.weight, self.bias)
        _warn_fallback_once(refusal)
        return super().forward(x)
