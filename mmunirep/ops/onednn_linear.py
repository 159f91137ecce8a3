"""Linear layers on the CPU through oneDNN's matrix product, optionally with GELU fused.

PyTorch runs an fp32 ``F.linear`` on the CPU through MKL's sgemm, which on an AMD CPU with AVX-512
runs its AVX2 code; oneDNN, which PyTorch also ships and uses for its CPU convolutions, runs the
AVX-512 code there. ``benchmarks/cpu_linear_benchmark.py`` times both on the backbone's shapes.
The same oneDNN call applies the GELU that follows a block's first linear layer while the result is
still in cache, one pass over the block's widest map fewer.

PyTorch exposes this call only as the operator its CPU compiler (Inductor) emits,
``torch.ops.mkldnn._linear_pointwise``, so :func:`cpu_linear` takes it only where it has been
measured and where nothing else can see the difference: fp32 inference on the CPU in eager mode,
with a torch built with oneDNN. Everywhere else (a pass that records gradients, since the operator
has no backward; other dtypes and autocast; tracing, so ONNX export and FLOP counting see
``F.linear``; ``torch.compile``) it is ``F.linear``, followed by ``F.gelu`` if asked.
"""

from typing import Optional

import torch
import torch.nn.functional as F


def _onednn_linear_op():
    """The oneDNN linear operator of this torch build, or None."""
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, '_linear_pointwise', None)


def takes_onednn_linear(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`cpu_linear` runs ``x`` and ``weight`` through oneDNN."""
    if x.device.type != 'cpu' or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if torch.is_autocast_enabled('cpu'):
        return False
    return _onednn_linear_op() is not None


def cpu_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, gelu: bool = False
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, then the exact (erf) GELU if ``gelu``: through oneDNN where
    the module docstring says, with the same result up to fp32 rounding."""
    if takes_onednn_linear(x, weight):
        op = _onednn_linear_op()
        return op(x, weight.contiguous(), bias, 'gelu' if gelu else 'none', [], 'none')
    out = F.linear(x, weight, bias)
    return F.gelu(out) if gelu else out
