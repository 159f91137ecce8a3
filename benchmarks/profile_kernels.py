"""Run the op's kernels once per shape and pass, for a profiler (needs a GPU).

    ncu --clock-control none \
        -k 'regex:depthwise_conv2d_(forward|weight_grad)_(k|tc|pipelined)_kernel' \
        --section SpeedOfLight --section Occupancy --section WarpStateStats \
        python benchmarks/profile_kernels.py [--shapes N,C,H,W,K ...] [--dtypes fp32 bf16]

Each (shape, dtype) runs the forward pass and the weight gradient once (the input gradient is the
forward kernel with the flipped filter), and for maps larger than 16x16 the pipelined weight
gradient too (MMUNIREP_DWCONV_PIPELINE=1; its kernel's name ends in `, true>`), in fp16 / bf16
the tensor-core forward (K = 7 and 13) and weight gradient (MMUNIREP_DWCONV_FWD_TC=1,
MMUNIREP_DWCONV_WGRAD_TC=1; `forward_tc_kernel`, `weight_grad_tc_kernel`) and, at K = 7 and
13, the forward on the other tiles (MMUNIREP_DWCONV_FWD_TILE; the tile is in the kernel's name)
and, in fp32 at K = 7 and 13, the pipelined forward on the map's default tile and on the other
tiles (MMUNIREP_DWCONV_FWD_PIPELINE=1; `forward_pipelined_kernel`), after printing a `case` line, so that the profiler's report can be
read case by case. ``gpu_session.sh`` runs it under ncu as its `profile` step. The default cases
are the three kernels' main tile shapes: 16x32 tiles at K = 13 (detection), at K = 7 in bf16
(RepLKNet, where cuDNN is closest) and 8x8 whole maps (classification stage 4).
"""
import argparse

import torch
from bench_utils import (FWD_PIPELINED, FWD_TILES, environ, fwd_pipelined_apply,
                         fwd_pipelined_env, fwd_tiles_apply, parse_shapes, pipelined_applies)

DTYPES = dict(fp32=torch.float32, fp16=torch.float16, bf16=torch.bfloat16)
CASES = [((2, 192, 100, 168, 13), 'fp32'), ((64, 384, 32, 32, 7), 'bf16'),
         ((64, 768, 7, 7, 13), 'fp32')]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--shapes', nargs='+', metavar='N,C,H,W,K',
                        help='instead of the default cases, e.g. 2,192,100,168,13')
    parser.add_argument('--dtypes', nargs='+', choices=list(DTYPES),
                        help='with --shapes (default fp32)')
    args = parser.parse_args()
    if args.shapes:
        cases = [(s, d) for s in parse_shapes(args.shapes) for d in (args.dtypes or ['fp32'])]
    else:
        cases = CASES
    if not torch.cuda.is_available():
        raise SystemExit('profile_kernels needs a CUDA device')
    from mmunirep.ops import depthwise_conv as dw
    if not dw.ext_available():
        raise SystemExit('the CUDA extension is not built: bash tools/build_ops.sh')
    g = torch.Generator(device='cuda').manual_seed(0)
    for (n, c, h, w, k), dname in cases:
        dtype = DTYPES[dname]
        x = torch.randn(n, c, h, w, device='cuda', dtype=dtype, generator=g)
        weight = torch.randn(c, 1, k, k, device='cuda', dtype=dtype, generator=g)
        grad = torch.randn(n, c, h, w, device='cuda', dtype=dtype, generator=g)
        torch.cuda.synchronize()
        pipelined = pipelined_applies(h, w, k)
        tensor_cores = pipelined and dtype in (torch.float16, torch.bfloat16)  # the same maps
        tiles = FWD_TILES if fwd_tiles_apply(h, w, k) else ()
        piped = [t for t in FWD_PIPELINED if fwd_pipelined_apply(t, h, w, k, dtype)]
        print(f'case {(n, c, h, w, k)} {dname}: forward, then weight gradient'
              + (', then the pipelined weight gradient' if pipelined else '')
              + (', then the tensor-core forward (K <= 13) and weight gradient'
                 if tensor_cores else '')
              + ''.join(f', then the forward on {t} tiles' for t in tiles)
              + ''.join(f', then the forward {t}' for t in piped), flush=True)
        dw._ext.depthwise_conv2d_forward(x, weight, None)
        dw._ext.depthwise_conv2d_backward(grad, x, weight, False, True, False)
        if pipelined:
            with environ({'MMUNIREP_DWCONV_PIPELINE': '1'}):
                dw._ext.depthwise_conv2d_backward(grad, x, weight, False, True, False)
        if tensor_cores:
            with environ({'MMUNIREP_DWCONV_WGRAD_TC': '1', 'MMUNIREP_DWCONV_FWD_TC': '1'}):
                dw._ext.depthwise_conv2d_forward(x, weight, None)
                dw._ext.depthwise_conv2d_backward(grad, x, weight, False, True, False)
        for t in tiles:
            with environ({'MMUNIREP_DWCONV_FWD_TILE': t}):
                dw._ext.depthwise_conv2d_forward(x, weight, None)
        for t in piped:
            with environ(fwd_pipelined_env(t)):
                dw._ext.depthwise_conv2d_forward(x, weight, None)
        torch.cuda.synchronize()


if __name__ == '__main__':
    main()
