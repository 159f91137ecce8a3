"""Parameters and FLOPs of a segmentor or detector config (MMSegmentation / MMDetection).

    python tools/analysis_tools/get_flops.py \
        configs/segmentation/unireplknet_t_1k_upernet_160k_512.py --shape 512 2048 --deploy
    python tools/analysis_tools/get_flops.py configs/detection/unireplknet_t_1k_cascade_3x.py \
        --shape 800 1280

The model is built from the config's scope registry with the backbone's ``init_cfg`` set to None
(nothing is downloaded), SyncBN reverted to BN, in eval mode, and counted with
``mmengine.analysis.get_model_complexity_info`` on one random image of shape ``H x W`` (FLOPs: one
fused multiply-add counts as one FLOP, as in the paper's tables; BN, LayerNorm, interpolation and
pooling are counted, activations and element-wise ops are not).

What is counted follows the OpenMMLab tools the paper's figures come from:

* segmentors (MMSegmentation's ``tools/analysis_tools/get_flops.py``): ``model.forward`` in
  ``'tensor'`` mode, i.e. backbone + decode head; the auxiliary head, used only in training, is
  removed before counting, from the FLOPs and from the parameters. A decode head whose forward
  takes the data samples (Mask2Former's) is run on them: backbone, pixel decoder and transformer
  decoder with every decoder layer's class and mask predictions, without the post-processing
  that turns the queries into a label map.
* two-stage detectors (MMDetection 2.x's ``forward_dummy``, which the paper's tables used):
  backbone, neck, RPN head, and the RoI heads of every stage on ``--num-proposals`` (1000)
  proposals for the box branch and the first ``--num-mask-rois`` (100) of them for the mask
  branch (Mask R-CNN and Cascade Mask R-CNN alike). Other detectors (DINO): ``model.forward`` in
  ``'tensor'`` mode, as MMDetection 3.x's tool does: backbone, neck, encoder, query selection and
  decoder with the heads' outputs for every query, without the denoising queries (training only)
  and the post-processing. Deformable attention runs its PyTorch path on the CPU (grid_sample,
  counted as 4 multiply-adds per sampled value).

The paper's tables count the re-parameterized (inference) backbone: pass ``--deploy``. With it the
seven ADE20K configs (2048x512 for 512 crops, 2560x640 for 640 crops) give the paper's params
within 0.4% and FLOPs within 0.1%, and the Cascade Mask R-CNN configs (800x1280) within 0.6%
(params) and 0.1% (FLOPs). Without it the params are 0.5-1.4% higher (the BatchNorms and dilated
branches that re-parameterization folds away) and the FLOPs 0.3-0.4% higher.
"""

import argparse
import json
import sys
from functools import partial

import torch
import torch.nn as nn
from mmengine.analysis import get_model_complexity_info
from mmengine.config import Config, DictAction
from mmengine.model import revert_sync_batchnorm

from mmunirep.utils import build_model as build_eager_model
from mmunirep.utils import framework_of
from mmunirep.utils.dummy_inputs import dummy_batch


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Params and FLOPs of a segmentor or detector')
    parser.add_argument('config', help='config file path')
    parser.add_argument(
        '--shape',
        type=int,
        nargs='+',
        required=True,
        metavar='H W',
        help='input image height and width (one value: square)',
    )
    parser.add_argument(
        '--num-proposals',
        type=int,
        default=1000,
        help='two-stage detectors: proposals fed to the box heads',
    )
    parser.add_argument(
        '--num-mask-rois',
        type=int,
        default=100,
        help='two-stage detectors: RoIs fed to the mask heads',
    )
    parser.add_argument(
        '--deploy',
        action='store_true',
        help='count the re-parameterized (inference) UniRepLKNet, as the paper',
    )
    parser.add_argument(
        '--keep-aux-head',
        action='store_true',
        help='segmentors: keep the auxiliary (training-only) head in the params '
        '(the test-time forward never runs it, so its FLOPs are not counted)',
    )
    parser.add_argument('--json', action='store_true', help='print the result as JSON')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, e.g. model.backbone.deploy=True',
    )
    args = parser.parse_args(argv)
    if len(args.shape) == 1:
        args.shape = [args.shape[0]] * 2
    if len(args.shape) != 2 or min(args.shape) < 32:
        parser.error(f'--shape takes H W (at least 32 each), got {args.shape}')
    return args


def build_model(cfg: Config) -> nn.Module:
    """The config's model without pretrained weights, with an eager backbone even where the
    config compiles it (a compiled forward cannot be traced), in eval mode, SyncBN as BN."""
    model = revert_sync_batchnorm(build_eager_model(cfg))
    model.eval()
    return model


class TwoStageDummy(nn.Module):
    """MMDetection 2.x's ``TwoStageDetector.forward_dummy`` for MMDetection 3.x models.

    Backbone, neck, RPN head, then each RoI head stage on fixed random proposals: the box branch
    on all of them, the mask branch on the first ``num_mask_rois``.
    """

    def __init__(
        self, detector: nn.Module, img_shape, num_proposals: int = 1000, num_mask_rois: int = 100
    ):
        super().__init__()
        self.detector = detector
        gen = torch.Generator().manual_seed(0)
        h, w = img_shape
        xy = torch.rand(num_proposals, 2, generator=gen) * torch.tensor([w * 0.9, h * 0.9])
        wh = 16 + torch.rand(num_proposals, 2, generator=gen) * torch.tensor([w / 3, h / 3])
        boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([w - 1.0, h - 1.0]))], dim=1)
        self.register_buffer('proposals', boxes, persistent=False)
        self.num_mask_rois = num_mask_rois

    def forward(self, inputs: torch.Tensor):
        from mmdet.structures.bbox import bbox2roi

        det = self.detector
        x = det.extract_feat(inputs)
        outs = []
        if det.with_rpn:
            cls_scores, bbox_preds = det.rpn_head(x)
            outs += list(cls_scores) + list(bbox_preds)
        roi_head = det.roi_head
        rois = bbox2roi([self.proposals.to(inputs.dtype)])
        mask_rois = rois[: self.num_mask_rois]
        stages = getattr(roi_head, 'num_stages', None)
        if roi_head.with_bbox:
            for i in range(stages) if stages else [None]:
                res = roi_head._bbox_forward(*(() if i is None else (i,)), x, rois)
                outs += [res['cls_score'], res['bbox_pred']]
        if roi_head.with_mask:
            for i in range(stages) if stages else [None]:
                res = roi_head._mask_forward(*(() if i is None else (i,)), x, mask_rois)
                outs.append(res['mask_preds'])
        return tuple(outs)


class SegmentorWithSamples(nn.Module):
    """Backbone (+ neck) and a decode head whose forward takes the data samples
    (``Mask2FormerHead.forward(x, batch_data_samples)``): what ``mode='tensor'`` would run."""

    def __init__(self, segmentor: nn.Module, data_samples):
        super().__init__()
        self.segmentor = segmentor
        self.data_samples = data_samples

    def forward(self, inputs: torch.Tensor):
        seg = self.segmentor
        return seg.decode_head.forward(seg.extract_feat(inputs), self.data_samples)


def head_needs_samples(head: nn.Module) -> bool:
    """Whether a decode head's forward takes a second argument (the data samples)."""
    import inspect

    params = list(inspect.signature(head.forward).parameters.values())
    return len(params) > 1 and params[1].default is inspect.Parameter.empty


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def get_flops(
    config: str,
    shape,
    cfg_options=None,
    num_proposals: int = 1000,
    num_mask_rois: int = 100,
    keep_aux_head: bool = False,
    deploy: bool = False,
) -> dict:
    """Count a config's model; returns params, flops and what was counted."""
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    framework = framework_of(cfg)
    if deploy:
        if 'UniRepLKNet' not in str(cfg.model.get('backbone', {}).get('type', '')):
            raise ValueError('--deploy needs a UniRepLKNet backbone')
        cfg.model.backbone.deploy = True
    if 'use_lk_op' in cfg.model.get('backbone', {}):
        # The large-kernel op's CUDA path is an autograd Function, opaque to the tracer that
        # counts FLOPs; its F.conv2d path has the same structure and FLOPs and is counted.
        cfg.model.backbone.use_lk_op = False
    model = build_model(cfg)
    result = dict(config=config, framework=framework, shape=tuple(shape), deploy=deploy)

    with torch.no_grad():
        if framework == 'mmseg':
            aux = getattr(model, 'auxiliary_head', None)
            result['aux_head_params'] = count_params(aux) if aux is not None else 0
            if not keep_aux_head and aux is not None:
                model.auxiliary_head = None  # as MMSegmentation's tool: test-time model only
            inputs, data_samples = dummy_batch(model, framework, 1, *shape)
            target = model
            counted = 'backbone + decode head' + (' (+ aux head params)' if keep_aux_head else '')
            if head_needs_samples(model.decode_head):
                target = SegmentorWithSamples(model, data_samples)
                counted += ' (every decoder layer, no post-processing)'
        else:
            from mmdet.models.detectors import TwoStageDetector

            inputs, data_samples = dummy_batch(model, framework, 1, *shape)
            if isinstance(model, TwoStageDetector) and model.with_roi_head:
                target = TwoStageDummy(model, inputs.shape[-2:], num_proposals, num_mask_rois)
                counted = (
                    f'backbone + neck + RPN head + RoI heads on {num_proposals} proposals '
                    f'(masks on {min(num_mask_rois, num_proposals)})'
                )
            else:
                model.forward = partial(model.forward, data_samples=data_samples, mode='tensor')
                target = model
                counted = "model.forward(mode='tensor')"
        result['input_shape'] = tuple(inputs.shape[-2:])
        outputs = get_model_complexity_info(
            target, inputs=(inputs,), show_table=False, show_arch=False
        )
    result['flops'] = int(outputs['flops'])
    result['params'] = count_params(model)
    result['backbone_params'] = count_params(model.backbone)
    result['counted'] = counted
    return result


def main(argv=None):
    args = parse_args(argv)
    deploy = args.deploy
    result = get_flops(
        args.config,
        args.shape,
        args.cfg_options,
        args.num_proposals,
        args.num_mask_rois,
        args.keep_aux_head,
        args.deploy,
    )
    if args.json:
        sys.stdout.write(json.dumps(result) + '\n')
    else:
        line = '=' * 60
        lines = [
            line,
            f'config:      {result["config"]}',
            f'input shape: {result["input_shape"][0]} x {result["input_shape"][1]} (H x W)',
            f'counted:     {result["counted"]}',
            f'structure:   {"re-parameterized (deploy)" if deploy else "as trained"}',
            f'params:      {result["params"] / 1e6:.2f} M '
            f'(backbone {result["backbone_params"] / 1e6:.2f} M)',
            f'FLOPs:       {result["flops"] / 1e9:.1f} G',
        ]
        if result.get('aux_head_params') and not args.keep_aux_head:
            lines.append(
                f'             (auxiliary head not counted: '
                f'{result["aux_head_params"] / 1e6:.2f} M params)'
            )
        sys.stdout.write('\n'.join(lines + [line]) + '\n')
    return result


if __name__ == '__main__':
    main()
