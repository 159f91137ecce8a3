"""The blocks' inference path: whether a forward takes it, and the linear layer with per-image
channel factors through which it applies the squeeze-and-excitation and GRN products."""

import torch
import torch.nn as nn

from mmunirep.ops import cpu_linear


def takes_inference_path() -> bool:
    """Whether the blocks run an inference form of their residual branch: where no gradient is
    recorded, in eager mode (:meth:`UniRepLKNetBlock._inference_residual`) and in the
    TorchScript-based ONNX export (:meth:`UniRepLKNetBlock._export_residual`). Other tracing (a
    FLOP count) keeps the plain graph, and so does compiling, ``torch.export`` and the exporter
    built on it, which capture the plain graph with symbolic sizes."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return False
    if torch.jit.is_tracing():
        return torch.onnx.is_in_onnx_export()
    return True


def scaled_linear(
    x: torch.Tensor,
    scale: torch.Tensor,
    linear: nn.Linear,
    inplace: bool = False,
    gelu: bool = False,
) -> torch.Tensor:
    """``linear(x * scale)``, then GELU if ``gelu``, for an NHWC map ``x`` and per-image channel
    factors ``scale`` ``(N, 1, 1, C_in)``; the product runs through :func:`cpu_linear`.

    For one image whose map has more pixels than the layer has outputs, the factors go into the
    weight (``C_out x C_in`` products rather than ``H x W x C_in``, and no pass over the map).
    Otherwise ``x`` is scaled, in place if ``inplace`` (only where no gradient is recorded).
    """
    n, h, w, c = x.shape
    if n == 1 and h * w > linear.out_features:
        return cpu_linear(x, linear.weight * scale.reshape(1, c), linear.bias, gelu)
    x = x.mul_(scale) if inplace else x * scale
    return cpu_linear(x, linear.weight, linear.bias, gelu)
