"""Export the deploy structure of a UniRepLKNet backbone or segmentor to ONNX, and check it.

    python tools/deployment/export_onnx.py CONFIG [--checkpoint CKPT] --out model.onnx \
        [--part segmentor]

``--part backbone`` exports the backbone (image -> its multi-scale features); ``--part segmentor``
(MMSegmentation configs) exports image -> per-pixel class logits at the input size. The model is
re-parameterized first (a training-structure checkpoint is converted on the way), exported with
a dynamic batch axis (and dynamic spatial axes for the backbone; UperNet's pyramid pooling fixes
the segmentor's input size to --shape), then run in onnxruntime on a fresh random input and
compared with PyTorch (relative max error <= --rtol). The graph holds only standard ONNX operators.

Detectors are not exported: their RoI heads need mmcv's custom operators, and mmdeploy, the
field's tool for them, does not support this stack (mmcv 2.1 on torch 2.14).
"""

import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import DictAction
from mmengine.logging import print_log

from mmunirep.models import reparameterize_unireplknet
from mmunirep.utils import (
    atomic_write,
    build_model,
    framework_of,
    load_model_weights,
    model_state_dict,
    prepare_cfg,
    read_checkpoint,
)
from mmunirep.utils.checkpoint import backbone_structure


class SegmentorLogits(nn.Module):
    """image (N, 3, H, W, normalized) -> logits (N, num_classes, H, W)."""

    def __init__(self, segmentor):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, x):
        logits = self.segmentor.decode_head(self.segmentor.extract_feat(x))
        return F.interpolate(
            logits,
            size=x.shape[-2:],
            mode='bilinear',
            align_corners=self.segmentor.decode_head.align_corners,
        )


class MatmulAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two matrix products, for a traced (fixed) input size.

    torch's TorchScript ONNX exporter cannot export adaptive pooling to sizes that do not divide
    the input (UperNet pools to 1, 2, 3 and 6). Bin ``i`` of ``n`` over ``L`` averages
    ``[floor(i * L / n), ceil((i + 1) * L / n))``, as PyTorch does, so the result is the same.
    """

    def __init__(self, output_size):
        super().__init__()
        size = output_size if isinstance(output_size, (tuple, list)) else (output_size,) * 2
        self.output_size = tuple(size)

    @staticmethod
    def _matrix(n: int, length: int, like: torch.Tensor) -> torch.Tensor:
        m = torch.zeros(n, length, dtype=like.dtype)
        for i in range(n):
            lo, hi = (i * length) // n, -(-((i + 1) * length) // n)
            m[i, lo:hi] = 1.0 / (hi - lo)
        return m

    def forward(self, x):
        h, w = int(x.shape[-2]), int(x.shape[-1])
        oh = self.output_size[0] or h
        ow = self.output_size[1] or w
        ph, pw = self._matrix(oh, h, x), self._matrix(ow, w, x)
        return torch.matmul(torch.matmul(ph, x), pw.t())


def make_exportable(module: nn.Module) -> nn.Module:
    """Replace adaptive average pooling by :class:`MatmulAdaptiveAvgPool2d`, in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.AdaptiveAvgPool2d):
            setattr(module, name, MatmulAdaptiveAvgPool2d(child.output_size))
        else:
            make_exportable(child)
    return module


class BackboneFeatures(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        return tuple(self.backbone(x))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Export UniRepLKNet to ONNX')
    parser.add_argument('config', help='config file')
    parser.add_argument('--checkpoint', help='checkpoint (training or deploy structure)')
    parser.add_argument('--out', required=True, help='output .onnx file')
    parser.add_argument('--part', choices=['backbone', 'segmentor'], default='backbone')
    parser.add_argument('--shape', type=int, nargs=2, default=(512, 512), metavar=('H', 'W'))
    parser.add_argument('--opset', type=int, default=17)
    parser.add_argument(
        '--rtol', type=float, default=1e-4, help='max |onnx - torch| / max |torch| accepted'
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, e.g. model.backbone.arch=s',
    )
    args = parser.parse_args(argv)
    if min(args.shape) < 32:
        parser.error(
            f'--shape takes H W of at least 32 each (the backbone downsamples by 32), '
            f'got {list(args.shape)}'
        )
    if args.part == 'segmentor' and any(v % 32 for v in args.shape):
        parser.error(
            f'--part segmentor exports one input size, a multiple of 32 in both sides '
            f'(as the test pipeline pads), got {list(args.shape)}'
        )
    if not args.rtol > 0:
        parser.error(f'--rtol must be positive, got {args.rtol}')
    return args


def load_deploy_model(cfg, checkpoint):
    """The config's model with the checkpoint's weights (either structure; random weights
    without one), re-parameterized, in eval mode."""
    if checkpoint is None:
        model = build_model(cfg, deploy=False)
        model.init_weights()
    else:
        ckpt = read_checkpoint(checkpoint)
        keys = [k for k in model_state_dict(ckpt, checkpoint) if k.startswith('backbone.')]
        model = build_model(cfg, deploy=backbone_structure(keys)[0] == 'deploy')
        load_model_weights(model, ckpt, source=checkpoint, cfg_hint='--cfg-options model.backbone.')
    return reparameterize_unireplknet(model).eval()


def main(argv=None):
    args = parse_args(argv)
    cfg = prepare_cfg(args.config, cfg_options=args.cfg_options)
    if args.part == 'segmentor' and framework_of(cfg) != 'mmseg':
        raise ValueError(
            '--part segmentor needs an MMSegmentation config; detectors are not '
            "exported (see this script's docstring)"
        )
    model = load_deploy_model(cfg, args.checkpoint)
    if args.part == 'segmentor':
        module = make_exportable(SegmentorLogits(model))
    else:
        module = BackboneFeatures(model.backbone)
    module.eval()
    h, w = args.shape
    example = torch.randn(1, 3, h, w)
    with torch.no_grad():
        n_out = 1 if args.part == 'segmentor' else len(module(example))
    outputs = ['logits'] if args.part == 'segmentor' else [f'feat{i}' for i in range(n_out)]
    if args.part == 'backbone':
        dynamic = {'input': {0: 'batch', 2: 'height', 3: 'width'}}
        dynamic.update({o: {0: 'batch', 2: f'{o}_h', 3: f'{o}_w'} for o in outputs})
        check_shape = (2, 3, h + 32, w + 64)  # another batch size and shape than traced
    else:
        # UperNet's pyramid pooling is exported for the fixed size --shape
        dynamic = {'input': {0: 'batch'}, 'logits': {0: 'batch'}}
        check_shape = (2, 3, h, w)
    print_log(f'exporting {args.part} of {args.config} to {args.out}', logger='current')
    # written beside OUT and renamed into place only once onnxruntime agrees with PyTorch
    with atomic_write(args.out) as tmp:
        # the TorchScript-based exporter: the dynamo exporter needs onnxscript and gives no
        # benefit here
        torch.onnx.export(
            module,
            (example,),
            tmp,
            dynamo=False,
            opset_version=args.opset,
            input_names=['input'],
            output_names=outputs,
            dynamic_axes=dynamic,
        )
        return verify(module, tmp, check_shape, args.rtol)


def verify(module, path, shape, rtol):
    """Run the ONNX file in onnxruntime on fresh data; compare with PyTorch."""
    import onnx
    import onnxruntime as ort

    graph = onnx.load(path)
    domains = {n.domain for n in graph.graph.node} - {'', 'ai.onnx'}
    if domains:
        raise RuntimeError(f'{path} uses custom operator domains {domains}')
    x = torch.randn(*shape)
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    onnx_outs = session.run(None, {'input': x.numpy()})
    with torch.no_grad():
        torch_outs = module(x)
    torch_outs = [torch_outs] if isinstance(torch_outs, torch.Tensor) else list(torch_outs)
    errors = []
    for o, t in zip(onnx_outs, torch_outs):
        t = t.numpy()
        if o.shape != t.shape:
            raise RuntimeError(f'ONNX output shape {o.shape} != PyTorch {t.shape}')
        errors.append(float(np.abs(o - t).max() / np.abs(t).max()))
    if not all(e <= rtol for e in errors):  # NaN too
        raise RuntimeError(f'ONNX and PyTorch differ: relative errors {errors} > {rtol}')
    print_log(
        f'onnxruntime matches PyTorch on a {tuple(shape)} input: relative max errors '
        f'{["%.2e" % e for e in errors]} (<= {rtol})',
        logger='current',
    )
    return errors


if __name__ == '__main__':
    main()
