"""Large-kernel depthwise convolution ("iGEMM" in the UniRepLKNet paper's code).

:class:`DepthWiseConv2dImplicitGEMM` is an ``nn.Conv2d`` subclass (same state dict, truthful
attributes: ``padding == kernel_size // 2``, ``groups == channels``). It runs the compiled CUDA
kernels of ``mmunirep._ext`` when they are built and the input is a CUDA tensor they support;
otherwise it falls back to ``F.conv2d`` with the same result and warns once how to build the op.
"""
import warnings

import torch
import torch.nn as nn

try:  # the compiled extension is optional: never let its absence break the fallback
    from mmunirep import _ext  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the build
    _ext = None

_warned = False

BUILD_HINT = ('mmunirep\'s CUDA depthwise op is not available; falling back to F.conv2d. '
              'Build it with `FORCE_CUDA=1 pip install --no-build-isolation -e .` on a machine '
              'with nvcc (see README, "The op").')


def ext_available() -> bool:
    """Whether the compiled CUDA extension was built and imports."""
    return _ext is not None and hasattr(_ext, 'dwconv_forward')


def _warn_fallback_once(reason: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f'{BUILD_HINT} ({reason})', stacklevel=3)


class DepthWiseConv2dImplicitGEMM(nn.Conv2d):
    """Depthwise ``k x k`` convolution, stride 1, "same" padding; NCHW in and out.

    Args:
        channels (int): input = output channels (= groups).
        kernel_size (int): odd kernel size.
        bias (bool): whether the conv has a bias.
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool = False):
        if kernel_size % 2 != 1:
            raise ValueError(f'DepthWiseConv2dImplicitGEMM needs an odd kernel_size, got {kernel_size}')
        super().__init__(channels, channels, kernel_size, stride=1, padding=kernel_size // 2,
                         dilation=1, groups=channels, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The CUDA kernels (issue "ops/") plug in here; until they are built every input
        # takes the F.conv2d path.
        _warn_fallback_once('input on the CPU' if not x.is_cuda else 'extension not built')
        return super().forward(x)
