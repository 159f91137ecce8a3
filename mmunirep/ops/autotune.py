"""Per-shape choice among the depthwise op's kernel variants, as ``cudnn.benchmark`` chooses
among cuDNN's algorithms.

The extension has, beside its default kernels, variants that are faster or slower depending on
the GPU, the shape and the dtype: other forward tiles (16x32 of 2 planes, 32x32 of 2 planes), a
pipelined forward in fp32 (cp.async) on each tile, a pipelined weight gradient, tensor-core forward and
weight-gradient kernels for fp16 / bf16 (ops/README.md), and for each weight-gradient kernel
half or twice the parts per channel that
its rule (a wave model, ``weight_grad_parts`` in depthwise_conv_launch.cuh) gives. With
autotuning on, the first call of each (device, dtype, shape, pass) runs every variant that
applies, checks its result against the default kernel's (a variant that disagrees or fails is
left out, with a warning), times the others (median of CUDA-event timings) and keeps the fastest
for that shape's later calls, in this process.

On when ``MMUNIREP_DWCONV_AUTOTUNE=1``, off when ``=0``. Unset, it is off for now: none of the
variants has run on a GPU yet (the next GPU session's tests run them), and MMSegmentation's
runtime turns ``cudnn.benchmark`` on by default. Once they have, unset will follow
``torch.backends.cudnn.benchmark`` (mmengine's ``env_cfg.cudnn_benchmark``):
:data:`FOLLOW_CUDNN_BENCHMARK`. Off under
``torch.use_deterministic_algorithms(True)``: each variant is deterministic, but which one wins
may differ from run to run, and their roundings differ. While a CUDA graph is captured nothing is
tuned (a choice made before is used). For the shapes it tunes, the choice overrides the
variants' environment switches (``MMUNIREP_DWCONV_FWD_TILE`` and the others), which remain for
measuring one variant everywhere.

Written here because nothing in torch does it for an extension's own kernels (Triton's
autotuner is for Triton kernels; ``torch._inductor``'s for the kernels it generates).
"""
import os
import statistics
import time
import warnings
from contextlib import contextmanager
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from mmengine.logging import print_log

# (forward_tile, forward_tc, weight_grad_tc, pipelined, weight_grad_parts, forward_pipelined), as
# the extension's set_variants takes them; -1: the environment's choice, or the default
Variant = Tuple[int, int, int, int, int, int]
UNSET: Variant = (-1, -1, -1, -1, -1, -1)
# weight_grad_parts: the rule's count, half of it, twice it (clamped to 1..min(items, 64) in C++)
PARTS = (('', 0), (', half the parts', 1), (', twice the parts', 2))
COMPILED_KERNELS = (7, 13, 31)  # the sizes with compile-time kernels, which have variants
HALF_DTYPES = (torch.float16, torch.bfloat16)
# how far a variant's result may be from the default kernel's, relative to the largest value of
# the default's: the tile and pipelined variants add the same products in the same order (bitwise
# equal), another parts count splits the weight gradient's sums elsewhere, the tensor-core ones
# add in another order and round their output once
AGREEMENT = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
TIMED_REPEATS = 5
# whether MMUNIREP_DWCONV_AUTOTUNE unset follows cudnn.benchmark (True) or means off (False: until
# the variants have passed the GPU tests; ops/README.md)
FOLLOW_CUDNN_BENCHMARK = False

Key = Tuple
_choices: Dict[Key, Tuple[str, Tuple[int, ...]]] = {}
_warned: set = set()


# os.environ.get of an unset variable raises and catches a KeyError inside: 1.3 us, most of what
# this check added to an eager call's 9 us of dispatch (benchmarks/op_overhead_benchmark.py). The
# dict behind os.environ (POSIX: bytes keys; setenv and monkeypatch update it) answers in 30 ns.
_ENVIRON_DATA = getattr(os.environ, '_data', None)


def _switch() -> str:
    if isinstance(_ENVIRON_DATA, dict) and os.name == 'posix':
        value = _ENVIRON_DATA.get(b'MMUNIREP_DWCONV_AUTOTUNE')
        return '' if value is None else os.fsdecode(value)
    return os.environ.get('MMUNIREP_DWCONV_AUTOTUNE', '')


def enabled() -> bool:
    """Whether the autotuner is on: MMUNIREP_DWCONV_AUTOTUNE (unset: cudnn.benchmark, once
    FOLLOW_CUDNN_BENCHMARK), and not under deterministic algorithms."""
    flag = _switch()
    if flag not in ('', '0', '1'):
        raise ValueError(f'MMUNIREP_DWCONV_AUTOTUNE: expected 1 or 0 (or unset), got {flag!r}')
    on = flag == '1' or (flag == '' and FOLLOW_CUDNN_BENCHMARK and torch.backends.cudnn.benchmark)
    return on and not torch.are_deterministic_algorithms_enabled()


def mode(x: torch.Tensor, ext) -> str:
    """'off' (the environment's variants), 'tune' (tune a new shape) or 'apply' (only the choices
    already made: during a CUDA graph capture)."""
    if not enabled():
        return 'off'
    if not hasattr(ext, 'set_variants'):  # a build without CUDA: no kernel variants to choose
        return 'off'
    if getattr(ext, 'variant_fields', 0) != len(UNSET):
        _warn_once(('stale extension', ), 'mmunirep depthwise op: autotuning is on, but the built '
                   'extension predates its variants (set_variants takes '
                   f'{getattr(ext, "variant_fields", "no")} of the {len(UNSET)} expected); it runs '
                   'without autotuning. Rebuild it: `FORCE_CUDA=1 pip install --no-build-isolation '
                   '-e .` (README, "The op").')
        return 'off'
    if x.is_cuda and torch.cuda.is_current_stream_capturing():
        return 'apply'
    return 'tune'


def choices() -> Dict[Key, str]:
    """The variant chosen for each (pass, device, dtype, N, C, H, W, K) tuned so far."""
    return {key: name for key, (name, _) in _choices.items()}


def reset() -> None:
    """Forget every choice (the next call of each shape tunes again)."""
    _choices.clear()


def _tensor_cores(x: torch.Tensor) -> bool:
    # the emulated kernels of the tests run on the CPU and emulate wmma
    return not x.is_cuda or torch.cuda.get_device_capability(x.device)[0] >= 8


# Where the extension has variants (depthwise_conv_launch.cuh decides; these mirror it so that
# nothing is timed twice, and the benchmarks ask them which columns to time).
def weight_grad_variants_apply(h: int, w: int, k: int) -> bool:
    """Whether an H x W map at K has weight-gradient kernel variants (pipelined; tensor cores in
    fp16 / bf16): compile-time K (7, 13, 31) and a map too large for a whole-map tile (16x16 up
    to K = 13; with_tile_shape). The parts count varies wherever K is compiled."""
    return k in COMPILED_KERNELS and (k > 13 or h > 16 or w > 16)


def forward_variants_apply(h: int, w: int, k: int) -> bool:
    """Whether an H x W map at K has the other forward / input-gradient tiles (and, in fp16 /
    bf16, the tensor-core forward): K = 7 and 13, maps larger than 16x16
    (with_forward_tile_shape)."""
    return k in (7, 13) and (h > 16 or w > 16)


def pipelined_forward_applies(k: int, dtype: torch.dtype) -> bool:
    """Whether the pipelined forward / input gradient runs (on each tile, whole-map ones
    included): fp32 (cp.async copies without converting) at K = 7 and 13."""
    return k in (7, 13) and dtype == torch.float32


def _compiled_kernels(x: torch.Tensor) -> bool:
    """float / half / bfloat16 without MMUNIREP_DWCONV_GENERIC=1 (double and that switch take the
    run-time-K kernels, which have no variants)."""
    return x.dtype != torch.float64 and os.environ.get('MMUNIREP_DWCONV_GENERIC') != '1'


def forward_candidates(x: torch.Tensor, k: int) -> List[Tuple[str, Tuple[int, int, int]]]:
    """(name, (forward_tile, forward_tc, forward_pipelined)) of the forward / input-gradient
    variants for ``x``, the default first; none where there is only the default."""
    if not _compiled_kernels(x):
        return []
    large = forward_variants_apply(x.shape[2], x.shape[3], k)
    tiles = [('default tile', 0)]  # a small map's is its whole-map tile
    if large:
        tiles += [('16x32x2 tile', 1), ('32x32x2 tile', 2)]
    out = [(name, (tile, 0, 0)) for name, tile in tiles]
    if pipelined_forward_applies(k, x.dtype):
        out += [(name + ', pipelined', (tile, 0, 1)) for name, tile in tiles]
    if large and x.dtype in HALF_DTYPES and _tensor_cores(x):
        out.append(('tensor cores', (0, 1, 0)))
    return out if len(out) > 1 else []


def weight_grad_candidates(x: torch.Tensor, k: int) -> List[Tuple[str, Tuple[int, int, int]]]:
    """(name, (weight_grad_tc, pipelined, weight_grad_parts)) of the weight-gradient variants
    for ``x``, the default first: each kernel with the rule's parts, half and twice as many
    (where half or twice is clamped to the rule's count, the same launch is timed twice: the
    count is decided in C++, from the kernel's occupancy)."""
    if not (_compiled_kernels(x) and k in COMPILED_KERNELS):
        return []
    kernels = [('default', (0, 0))]
    if weight_grad_variants_apply(x.shape[2], x.shape[3], k):
        kernels.append(('pipelined', (0, 1)))
        if x.dtype in HALF_DTYPES and _tensor_cores(x):
            kernels.append(('tensor cores', (1, 0)))
    return [(name + suffix, (*pair, parts)) for name, pair in kernels for suffix, parts in PARTS]


def _variant(fwd: Optional[Tuple[int, int, int]] = None,
             wgrad: Optional[Tuple[int, int, int]] = None) -> Variant:
    """set_variants' arguments from a forward choice (forward_tile, forward_tc,
    forward_pipelined) and a weight-gradient one (weight_grad_tc, pipelined, weight_grad_parts);
    None leaves a pass's fields unset."""
    tile, tc, fwd_pipelined = fwd or (-1, -1, -1)
    return (tile, tc, *(wgrad or (-1, -1, -1)), fwd_pipelined)


@contextmanager
def variants(ext, variant: Variant):
    """Run the extension's calls inside with ``variant`` (on this thread)."""
    if variant == UNSET:
        yield
        return
    ext.set_variants(*variant)
    try:
        yield
    finally:
        ext.set_variants(*UNSET)


def _time(fn: Callable[[], object], device: torch.device) -> float:
    """Median of TIMED_REPEATS calls after one warm-up: CUDA events on a GPU, the host clock
    elsewhere (the emulated kernels of the tests)."""
    fn()
    times = []
    for _ in range(TIMED_REPEATS):
        if device.type == 'cuda':
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _measure(name: str, fn: Callable[[], object], device: torch.device) -> float:
    """A candidate's time in ms (its name is for the tests, which substitute the times)."""
    return _time(fn, device)


def _warn_once(key: Tuple, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=4)


def _tune(key: Key, candidates: Sequence[Tuple[str, Tuple[int, ...]]],
          run: Callable[[Tuple[int, ...]], torch.Tensor],
          device: torch.device) -> Tuple[str, Tuple[int, ...]]:
    """Check every candidate against the first (the default kernel), time those that agree and
    return the fastest (name, pair)."""
    name0, pair0 = candidates[0]
    reference = run(pair0)  # the default kernel: if it fails, the op fails, as without tuning
    scale = reference.detach().abs().max().item()
    tolerance = AGREEMENT.get(reference.dtype, 1e-5) * max(scale, 1e-30)
    agreeing = [(name0, pair0)]
    for name, pair in candidates[1:]:
        try:
            out = run(pair)
        except RuntimeError as err:
            _warn_once((name, str(err)), f'mmunirep depthwise op: kernel variant "{name}" failed '
                       f'on {key} and is not used: {err}')
            continue
        err = (out.float() - reference.float()).abs().max().item()
        if not err <= tolerance:  # NaN included
            _warn_once((name, key), f'mmunirep depthwise op: kernel variant "{name}" differs from '
                       f'the default kernel by {err:.3g} (allowed {tolerance:.3g}) on {key}; it is '
                       'not used. Please report it with this message.')
            continue
        agreeing.append((name, pair))
        del out
    del reference
    if len(agreeing) == 1:
        return agreeing[0]
    timed = [(_measure(name, lambda p=pair: run(p), device), name, pair)
             for name, pair in agreeing]
    _, name, pair = min(timed, key=lambda t: t[0])
    # what was chosen, in the training log (once per shape and pass)
    print_log(f'mmunirep depthwise op autotuned {key}: {name} (' +
              ', '.join(f'{n} {ms:.3f} ms' for ms, n, _ in timed) + ')', logger='current')
    return name, pair


def shape_key(x: torch.Tensor, weight: torch.Tensor) -> Tuple:
    """(device, dtype, N, C, H, W, K): what a choice is kept for, after its pass."""
    return (str(x.device), str(x.dtype).replace('torch.', ''), *x.shape, weight.shape[-1])


def _choose(pass_: str, x, weight, candidates_of, run,
            tuning: bool) -> Optional[Tuple[int, ...]]:
    key = (pass_, *shape_key(x, weight))
    if key not in _choices:
        candidates = candidates_of(x, weight.shape[-1])
        if not candidates or not tuning:
            return None
        _choices[key] = _tune(key, candidates, run, x.device)
    return _choices[key][1]


def forward(ext, x: torch.Tensor, weight: torch.Tensor,
            bias: Optional[torch.Tensor]) -> torch.Tensor:
    """The extension's forward with the variant chosen for this shape (tuned on first use)."""
    tuning = mode(x, ext) == 'tune'

    def run(triple):
        with variants(ext, _variant(fwd=triple)):
            return ext.depthwise_conv2d_forward(x, weight, bias)

    choice = _choose('forward', x, weight, forward_candidates, run, tuning)
    return run(choice) if choice is not None else ext.depthwise_conv2d_forward(x, weight, bias)


def backward(ext, grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
             need_input: bool, need_weight: bool, need_bias: bool):
    """The extension's backward with the variants chosen for this shape: the forward's for the
    input gradient (the same kernels, with the flipped filter), the weight gradient's own."""
    tuning = mode(x, ext) == 'tune'
    fwd = wgrad = None
    if need_input:
        def run_input(triple):
            with variants(ext, _variant(fwd=triple)):
                return ext.depthwise_conv2d_backward(grad_out, x, weight, True, False, False)[0]

        fwd = _choose('forward', x, weight, forward_candidates, run_input, tuning)
    if need_weight:
        def run_weight(triple):
            with variants(ext, _variant(wgrad=triple)):
                return ext.depthwise_conv2d_backward(grad_out, x, weight, False, True, False)[1]

        wgrad = _choose('weight_grad', x, weight, weight_grad_candidates, run_weight, tuning)
    with variants(ext, _variant(fwd, wgrad)):
        return ext.depthwise_conv2d_backward(grad_out, x, weight, need_input, need_weight,
                                             need_bias)
