"""Large-kernel depthwise convolution ("iGEMM" in the UniRepLKNet paper's code).

Three layers, as in mmcv's ops:
- the compiled ``mmunirep._ext`` (``ops/csrc``: bindings, CUDA kernels, CPU path);
- the AMP-aware :func:`depthwise_conv2d`: in eager mode on the autograd
  :class:`DepthwiseConv2dFunction`; under ``torch.compile`` / ``torch.export`` on the PyTorch
  custom operators ``torch.ops.mmunirep.depthwise_conv2d`` (with its autograd formula) and
  ``torch.ops.mmunirep.depthwise_conv2d_backward``, which they trace without a graph break;
- the module :class:`DepthwiseConv2d`, an ``nn.Conv2d`` subclass with the same state dict and
  truthful attributes (``padding == kernel_size // 2``, ``groups == channels``), also exported as
  ``DepthWiseConv2dImplicitGEMM``, the name of the authors' code, for drop-in use.

The module runs the CUDA kernels for CUDA inputs in fp32 / fp16 / bf16 / fp64 (NCHW or
channels_last) when the extension is built; anything else (a CPU tensor, a missing extension, a
build without kernels for the GPU at hand, an unsupported dtype) takes ``F.conv2d`` with the same
result and warns once how to build the op (a missing extension when the module is built; under
``torch.compile`` the forward cannot warn).
"""

import warnings
from typing import Dict, Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

from .cpu_depthwise_conv import SameDepthwiseConv2d
from .cuda_archs import missing_kernels_message

try:  # the compiled extension is optional: never let its absence break the fallback
    from mmunirep import _ext  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the build
    _ext = None

_warned = False
MAX_KERNEL = 31
FAST_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

BUILD_HINT = (
    "mmunirep's CUDA depthwise op is not used; falling back to F.conv2d. On a machine "
    'with nvcc and a CUDA build of torch, build it with '
    '`FORCE_CUDA=1 pip install --no-build-isolation -e .` '
    '(docs/en/advanced_guides/depthwise_op.md).'
)


def ext_available() -> bool:
    """Whether the compiled extension was built with CUDA and imports."""
    return _ext is not None and getattr(_ext, 'with_cuda', False)


_missing_kernels_on: Dict[int, str] = {}


# Asked once per device. Under torch.compile the answer is a constant of the graph: Dynamo cannot
# trace the extension's call, and the check must not break the graph.
@torch.compiler.assume_constant_result
def missing_kernels(index: int) -> str:
    """Empty if the extension's kernels run on CUDA device ``index``, else why they do not and
    how to build them for it: a GPU that the build's ``TORCH_CUDA_ARCH_LIST`` does not cover
    would otherwise fail at the first launch ("no kernel image is available")."""
    if not ext_available():
        return 'extension not built'
    if index not in _missing_kernels_on:
        ask = getattr(_ext, 'missing_kernels', None)  # an extension built before it: assume yes
        reason = ask(index) if ask is not None else ''
        if reason:
            reason = missing_kernels_message(
                torch.cuda.get_device_name(index),
                torch.cuda.get_device_capability(index),
                getattr(_ext, 'cuda_archs', ''),
                reason,
            )
        _missing_kernels_on[index] = reason
    return _missing_kernels_on[index]


def _warn_fallback_once(reason: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f'{BUILD_HINT} ({reason})', stacklevel=3)


def _ext_forward(x, weight, bias):
    return _ext.depthwise_conv2d_forward(x, weight, bias)


def _ext_backward(grad_out, x, weight, need_input, need_weight, need_bias):
    return _ext.depthwise_conv2d_backward(grad_out, x, weight, need_input, need_weight, need_bias)


# Two ways into the same kernels. Eager mode takes DepthwiseConv2dFunction, an autograd.Function
# calling the extension directly. Under torch.compile / torch.export the kernels are two PyTorch
# custom operators (torch.ops.mmunirep.*): opaque ops with known output metadata (the fake
# implementations below), so the whole backbone traces into one graph, where a pybind call inside
# an autograd.Function breaks the graph at every block. Eager mode does not use the operators
# because their dispatch costs more host time per call
# (benchmarks/op_overhead_benchmark.py). Both look ``_ext`` up at call time (tests route them to
# the emulated kernels) and share _save_inputs / _gradients.
def _save_inputs(ctx, inputs, output=None):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _gradients(ctx, grad_out, backward):
    """The input, weight and bias gradients that autograd asks for (None for the others), from
    ``backward``: the extension's function or the custom operator."""
    x, weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    needs = (need_x, need_w, need_b and ctx.has_bias)
    grads = backward(grad_out.contiguous(), x, weight, *needs)
    return tuple(g if need else None for g, need in zip(grads, needs))


class DepthwiseConv2dFunction(torch.autograd.Function):
    """Eager mode's ``y = depthwise_conv2d(x, w) + b`` on contiguous NCHW tensors of one dtype.
    Its backward is not itself differentiable (a second derivative is an error)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type='cuda')
    def forward(ctx, x, weight, bias):
        _save_inputs(ctx, (x, weight, bias))
        return _ext_forward(x, weight, bias)

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type='cuda')
    def backward(ctx, grad_out):
        return _gradients(ctx, grad_out, _ext_backward)


@torch.library.custom_op('mmunirep::depthwise_conv2d', mutates_args=())
def _forward_op(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]
) -> torch.Tensor:
    # .contiguous(): no copy for the layouts depthwise_conv2d passes; a compiler that picks other
    # strides gets a copy, not an error
    return _ext_forward(
        x.contiguous(), weight.contiguous(), None if bias is None else bias.contiguous()
    )


@_forward_op.register_fake
def _forward_fake(x, weight, bias):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op('mmunirep::depthwise_conv2d_backward', mutates_args=())
def _backward_op(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    need_input: bool,
    need_weight: bool,
    need_bias: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of input, weight and bias; an empty tensor stands for one not asked for
    (a custom operator returns tensors, not None)."""
    grads = _ext_backward(
        grad_out.contiguous(),
        x.contiguous(),
        weight.contiguous(),
        need_input,
        need_weight,
        need_bias,
    )
    return tuple(
        g if need else x.new_empty(0)
        for g, need in zip(grads, (need_input, need_weight, need_bias))
    )


@_backward_op.register_fake
def _backward_fake(grad_out, x, weight, need_input, need_weight, need_bias):
    contiguous = torch.contiguous_format
    return (
        torch.empty_like(x, memory_format=contiguous) if need_input else x.new_empty(0),
        torch.empty_like(weight, memory_format=contiguous) if need_weight else x.new_empty(0),
        x.new_empty(x.shape[1]) if need_bias else x.new_empty(0),
    )


_forward_op.register_autograd(
    lambda ctx, grad_out: _gradients(ctx, grad_out, _backward_op), setup_context=_save_inputs
)


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    """Depthwise conv, stride 1, padding k // 2, on the compiled kernels. ``x``: NCHW or
    channels_last; the output keeps the input's memory format. Under autocast it computes in the
    autocast dtype, as ``F.conv2d`` does (the input, weight and bias are cast to it); otherwise
    the weight and bias follow the input's dtype."""
    if torch.is_autocast_enabled(x.device.type):
        x = x.to(torch.get_autocast_dtype(x.device.type))
    channels_last = (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    )
    x_c = x.contiguous()
    weight = weight.to(x.dtype).contiguous()
    bias = bias.to(x.dtype).contiguous() if bias is not None else None
    op = _forward_op if torch.compiler.is_compiling() else DepthwiseConv2dFunction.apply
    y = op(x_c, weight, bias)
    return y.contiguous(memory_format=torch.channels_last) if channels_last else y


class DepthwiseConv2d(SameDepthwiseConv2d):
    """Depthwise ``k x k`` convolution, stride 1, "same" padding; NCHW in and out. Where the
    kernels do not run, :class:`SameDepthwiseConv2d`'s forward does.

    Args:
        channels (int): input = output channels (= groups).
        kernel_size (int): odd kernel size, at most 31 for the CUDA kernels.
        bias (bool): whether the conv has a bias.
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool = False):
        super().__init__(channels, kernel_size, bias=bias)
        if not ext_available():
            # said here too, not only in forward: a forward under torch.compile cannot warn
            _warn_fallback_once('extension not built')

    def _fast_path_refusal(self, x: torch.Tensor):
        if not x.is_cuda:
            return 'input on the CPU'
        if not ext_available():
            return 'extension not built'
        missing = missing_kernels(x.device.index)
        if missing:
            return missing
        if x.dtype not in FAST_DTYPES or x.dim() != 4:
            return f'unsupported input {x.dtype} {x.dim()}-D'
        if self.kernel_size[0] > MAX_KERNEL or self.kernel_size[0] != self.kernel_size[1]:
            return f'kernel {self.kernel_size} beyond {MAX_KERNEL}'
        if not self._is_same_depthwise():
            return 'attributes changed after construction'
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        refusal = self._fast_path_refusal(x)
        if refusal is None:
            return depthwise_conv2d(x, self.weight, self.bias)
        # torch.compile cannot trace warnings.warn (it would break the graph here); a missing
        # extension was said at construction, and a CPU input under compile falls back quietly
        if not torch.compiler.is_compiling():
            _warn_fallback_once(refusal)
        return super().forward(x)


# The authors' name for the module (their code computed it as an implicit GEMM); kept so that code
# written for theirs runs unchanged.
DepthWiseConv2dImplicitGEMM = DepthwiseConv2d
