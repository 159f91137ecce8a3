"""Export a UniRepLKNet detector, segmentor or backbone to ONNX, re-parameterized, and check it.

    python tools/deployment/export_onnx.py CONFIG [--checkpoint CKPT] --out det.onnx \\
        --part detector
    python tools/deployment/export_onnx.py SEG_CONFIG --checkpoint CKPT --out seg.onnx \\
        --part segmentor

``--part detector`` (two-stage detectors: Faster / Mask / Cascade (Mask) R-CNN; DINO) exports the
whole predict path as one graph of standard operators (mmunirep/deploy/detector.py, dino.py):
``input`` (1, 3, H, W), normalized and padded as the config's data pre-processor does,
``image_shape`` (2,) int64, the resized image's (h, w) inside the padding, and
``score_threshold`` (1,) float32 (the config's ``score_thr``, 0 for DINO, is stored in the
metadata) -> ``boxes`` (K, 4) in the input's pixels,
``scores`` (K,), ``labels`` (K,) and, with masks, ``masks`` (K, 28, 28), each detection's class
probability over its box, which the caller pastes into the image. Batch 1, any H and W.
``--part segmentor`` (UperNet, FCN, Mask2Former): ``input`` (N, 3, H, W) -> ``logits``
(N, classes, H, W), any N, H and W.
``--part backbone``: ``input`` -> the backbone's features.

The model is re-parameterized first (a training-structure checkpoint is converted on the way).
The file holds only standard ONNX operators (checked with onnx.checker and for custom domains;
whether TensorRT 10's ONNX parser lists them all as supported is logged) and, as metadata, what
tools/deployment/onnx_inference.py needs to run it without the config: the test pipeline's resize,
the normalization, the padding, the classes (and a segmentor's label-map conventions, for
tools/deployment/evaluate_onnx.py). It is then run in onnxruntime on an input of
another size than the traced one and compared with PyTorch (segmentor, backbone: relative max
error <= --rtol; detector, with the score threshold at 0 so that the best ``max_per_img``
detections are compared whatever the weights: 99% of each side's detections matched by one of
the same class with IoU >= 0.99 on the other, and 99% of the pairs' scores and mask
probabilities within max(--rtol, 1e-3)), and only then written to OUT.
"""

import argparse
import json
import logging

import numpy as np
import torch
from mmengine.config import DictAction
from mmengine.logging import print_log

from mmunirep.deploy import exportable_detector
from mmunirep.deploy.metadata import (
    build_metadata,
    preprocess_spec,
    segmentation_annotations,
    write_metadata,
)
from mmunirep.deploy.segmentor import BackboneForExport, SegmentorForExport, backbone_export_axes
from mmunirep.deploy.tensorrt import tensorrt_parser_issues
from mmunirep.deploy.verify import box_iou, custom_operator_domains, matched_fraction
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
from mmunirep.utils.dummy_inputs import dummy_batch

PARTS = ('backbone', 'segmentor', 'detector')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Export UniRepLKNet to ONNX')
    parser.add_argument('config', help='config file')
    parser.add_argument('--checkpoint', help='checkpoint (training or deploy structure)')
    parser.add_argument('--out', required=True, help='output .onnx file')
    parser.add_argument('--part', choices=PARTS, default='backbone')
    parser.add_argument(
        '--shape',
        type=int,
        nargs=2,
        default=None,
        metavar=('H', 'W'),
        help="the traced input size (default: 512 512; detector: the test pipeline's resize "
        'scale, padded as the data pre-processor pads, e.g. 800 1344 for the COCO configs); '
        'the exported graph takes any size',
    )
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
    if args.shape is None and args.part != 'detector':  # a detector's comes from its config
        args.shape = (512, 512)
    if args.shape is not None and min(args.shape) < 32:
        parser.error(
            f'--shape takes H W of at least 32 each (the backbone downsamples by 32), '
            f'got {list(args.shape)}'
        )
    if args.part == 'segmentor' and any(v % 32 for v in args.shape):
        parser.error(
            f'--part segmentor traces an input size that is a multiple of 32 in both '
            f'sides (as the test pipeline resizes to), got {list(args.shape)}'
        )
    if not args.rtol > 0:
        parser.error(f'--rtol must be positive, got {args.rtol}')
    if args.opset < 16:
        parser.error(f"--opset must be 16 or more (RoiAlign's half_pixel), got {args.opset}")
    return args


def detector_input_size(cfg) -> tuple:
    """The size a detector's test pipeline gives a landscape image (the long side of its resize
    scale as the width), padded as its data pre-processor pads: what the export traces by
    default, so that the quick start traces at 160 x 160 and the COCO configs at 800 x 1344."""
    spec = preprocess_spec(cfg)
    if spec['resize'] is None:
        return (800, 1344)
    w, h = spec['resize']['scale']
    if spec['resize']['keep_ratio']:
        h, w = min(h, w), max(h, w)
    divisor = spec['pad_size_divisor']
    return (-(-h // divisor) * divisor, -(-w // divisor) * divisor)


def load_deploy_model(cfg, checkpoint):
    """The config's model with the checkpoint's weights (either structure; random weights
    without one), re-parameterized, in eval mode, and the checkpoint's meta."""
    meta = {}
    if checkpoint is None:
        model = build_model(cfg, deploy=False)
        model.init_weights()
    else:
        ckpt = read_checkpoint(checkpoint)
        meta = ckpt.get('meta') or {}
        keys = [k for k in model_state_dict(ckpt, checkpoint) if k.startswith('backbone.')]
        model = build_model(cfg, deploy=backbone_structure(keys)[0] == 'deploy')
        load_model_weights(model, ckpt, source=checkpoint, cfg_hint='--cfg-options model.backbone.')
    return reparameterize_unireplknet(model).eval(), meta


def main(argv=None):
    args = parse_args(argv)
    cfg = prepare_cfg(args.config, cfg_options=args.cfg_options)
    framework = framework_of(cfg)
    wanted = dict(segmentor='mmseg', detector='mmdet').get(args.part)
    if wanted and framework != wanted:
        kind = dict(mmseg='an MMSegmentation', mmdet='an MMDetection')[wanted]
        raise ValueError(
            f'--part {args.part} needs {kind} config; {args.config} is '
            f"{framework}'s (default_scope {framework!r})"
        )
    if args.shape is None:
        args.shape = detector_input_size(cfg)
    model, meta = load_deploy_model(cfg, args.checkpoint)
    part = PARTS_EXPORT[args.part](model, cfg, meta, args)
    print_log(f'exporting the {args.part} of {args.config} to {args.out}', logger='current')
    # written beside OUT and renamed into place only once onnxruntime agrees with PyTorch
    with atomic_write(args.out) as tmp:
        with torch.no_grad():
            # the TorchScript-based exporter: the dynamo exporter needs onnxscript and gives no
            # benefit here
            torch.onnx.export(
                part['module'],
                part['example'],
                tmp,
                dynamo=False,
                opset_version=args.opset,
                input_names=part['inputs'],
                output_names=part['outputs'],
                dynamic_axes=part['dynamic'],
            )
        add_metadata(tmp, part['metadata'])
        return verify(part, tmp, args.rtol)


def _backbone(model, cfg, meta, args):
    module = BackboneForExport(model.backbone).eval()
    h, w = args.shape
    example = (torch.randn(1, 3, h, w),)
    with torch.no_grad():
        outputs, dynamic = backbone_export_axes(len(module(*example)))
    # another batch size and shape than traced
    check = (torch.randn(2, 3, h + 32, w + 64),)
    return dict(
        module=module,
        example=example,
        check=check,
        inputs=['input'],
        outputs=outputs,
        dynamic=dynamic,
        metadata=build_metadata(cfg, 'backbone', ['input'], outputs),
    )


def _segmentor(model, cfg, meta, args):
    module = SegmentorForExport(model).eval()
    h, w = args.shape
    dynamic = {
        'input': {0: 'batch', 2: 'height', 3: 'width'},
        'logits': {0: 'batch', 2: 'height', 3: 'width'},
    }
    metadata = build_metadata(
        cfg,
        'segmentation',
        ['input'],
        ['logits'],
        meta,
        align_corners=model.decode_head.align_corners,
    )
    try:
        metadata['annotations'] = segmentation_annotations(cfg)
    except ValueError as error:  # only evaluate_onnx.py reads them: not worth refusing the export
        print_log(
            f"the label maps' conventions are not stored ({error}); evaluate_onnx.py will ask "
            'for --img-suffix, --seg-map-suffix and --[no-]reduce-zero-label',
            logger='current',
            level=logging.WARNING,
        )
    check_classes(metadata, model.decode_head.num_classes)
    return dict(
        module=module,
        example=(torch.randn(1, 3, h, w),),
        check=(torch.randn(2, 3, h + 32, w + 64),),
        inputs=['input'],
        outputs=['logits'],
        dynamic=dynamic,
        metadata=metadata,
    )


def _detector(model, cfg, meta, args):
    module = exportable_detector(model).eval()
    outputs = ['boxes', 'scores', 'labels'] + (['masks'] if module.with_mask else [])
    dynamic = {'input': {2: 'height', 3: 'width'}}
    dynamic.update({o: {0: 'detections'} for o in outputs})
    h, w = args.shape
    post = module.postprocess_settings()

    def example(height, width, score_thr):
        inputs, samples = dummy_batch(model, 'mmdet', 1, height, width)
        shape = torch.tensor(samples[0].img_shape, dtype=torch.long)
        return inputs, shape, torch.tensor([score_thr], dtype=torch.float32)

    inputs = ['input', 'image_shape', 'score_threshold']
    metadata = build_metadata(cfg, 'detection', inputs, outputs, meta, **post)
    check_classes(metadata, module.num_classes)
    return dict(
        module=module,
        example=example(h, w, post['score_thr']),
        # another size than traced (larger: any traced size leaves it valid); threshold 0: the
        # best max_per_img detections are compared, whatever the weights
        check=example(h + 32, w + 96, 0.0),
        inputs=inputs,
        outputs=outputs,
        dynamic=dynamic,
        metadata=metadata,
    )


PARTS_EXPORT = dict(backbone=_backbone, segmentor=_segmentor, detector=_detector)


def check_classes(metadata: dict, num_classes: int) -> None:
    """Refuse class names (the checkpoint's, else the config's dataset's) that do not name each
    class the model predicts: the inference script labels and scores detections by them."""
    classes = metadata['classes']
    if len(classes) != num_classes:
        raise ValueError(
            f'the model predicts {num_classes} classes but {len(classes)} class names were found '
            "(the checkpoint's meta dataset_meta.classes, else the config's test dataset's "
            f"classes): {classes}; name the model's classes in the config's "
            'test_dataloader.dataset.metainfo'
        )


def add_metadata(path: str, metadata: dict) -> None:
    import onnx

    proto = onnx.load(path)
    write_metadata(proto, metadata)
    onnx.save(proto, path)


def verify(part: dict, path: str, rtol: float):
    """Check the ONNX file and run it in onnxruntime on ``part['check']``; compare with PyTorch.
    Returns the relative errors of the outputs (detector: the largest differences of the matched
    detections' scores and mask probabilities)."""
    import onnx
    import onnxruntime as ort

    graph = onnx.load(path)
    onnx.checker.check_model(graph)
    domains = custom_operator_domains(graph)
    if domains:
        raise RuntimeError(f'{path} uses custom operator domains {domains}')
    report_tensorrt_support(graph)
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    feeds = {name: t.numpy() for name, t in zip(part['inputs'], part['check'])}
    onnx_outs = session.run(None, feeds)
    with torch.no_grad():
        torch_outs = part['module'](*part['check'])
    torch_outs = [torch_outs] if isinstance(torch_outs, torch.Tensor) else list(torch_outs)
    torch_outs = [t.numpy() for t in torch_outs]
    shape = tuple(part['check'][0].shape)
    if part['metadata']['task'] == 'detection':
        errors, pairs, outside = _compare_detections(
            onnx_outs,
            torch_outs,
            rtol,
            float(part['check'][2]),
            part['metadata']['postprocess']['max_per_img'],
        )
        what = (
            f'{pairs} matched detections (score threshold 0; {outside} of them beyond the '
            'tolerance), largest difference of the scores'
            + (' and mask probabilities' if len(errors) > 1 else '')
            + (' of the others' if outside else '')
        )
    else:
        errors = []
        for o, t in zip(onnx_outs, torch_outs):
            if o.shape != t.shape:
                raise RuntimeError(f'ONNX output shape {o.shape} != PyTorch {t.shape}')
            errors.append(float(np.abs(o - t).max() / np.abs(t).max()))
        if not all(e <= rtol for e in errors):  # NaN too
            raise RuntimeError(f'ONNX and PyTorch differ: relative errors {errors} > {rtol}')
        what = f'relative max errors (<= {rtol})'
    print_log(
        f'onnxruntime matches PyTorch on a {shape} input: {what} '
        f'{["%.2e" % e for e in errors]}; metadata {json.dumps(part["metadata"]["preprocess"])}',
        logger='current',
    )
    return errors


def report_tensorrt_support(graph) -> None:
    """Log whether TensorRT 10's ONNX parser states that it imports every node of the graph
    (a static reading, :mod:`mmunirep.deploy.tensorrt`); an ONNX file it would not import is
    still written, for onnxruntime."""
    issues = tensorrt_parser_issues(graph)
    if issues:
        shown = '\n  '.join(issues[:20]) + ('\n  ...' if len(issues) > 20 else '')
        print_log(
            f"TensorRT 10's ONNX parser does not import {len(issues)} node(s):\n  {shown}",
            logger='current',
            level=logging.WARNING,
        )
    else:
        kinds = len({n.op_type for n in graph.graph.node})
        print_log(
            f"TensorRT 10's ONNX parser lists all {kinds} operator types of the graph as "
            'supported, within its stated restrictions (a static check: no engine was built)',
            logger='current',
        )


def _compare_detections(onnx_outs, torch_outs, rtol, score_thr, max_per_img):
    """Each side's detections matched by one of the same class with IoU >= 0.99 on the other
    (99% of them at least), and the matched pairs' scores and mask probabilities within ``rtol``
    (at least 1e-3; 99% of the pairs at least). Compared are the detections that the other side
    must have too: those scoring above its cut-off (the score threshold, or its lowest score when
    it kept ``max_per_img``) by more than the score tolerance; nearer the cut-off, rounding may put
    them on either side. Where rounding orders two near-equal scores differently, a ranked step
    (DINO's query selection) can change a few detections. A check that pairs no detection compares
    nothing, and is refused. Returns the largest differences of the pairs within the tolerance,
    the number of pairs, and the number of pairs outside it."""
    if not all(np.isfinite(t).all() for t in onnx_outs):
        raise RuntimeError('ONNX and PyTorch differ: the ONNX outputs hold NaN or Inf')
    limit = max(rtol, 1e-3)

    def cut_off(scores):
        return scores.min() if len(scores) >= max_per_img else score_thr

    sides = dict(ONNX=onnx_outs[:3], PyTorch=torch_outs[:3])
    for name, other in (('PyTorch', 'ONNX'), ('ONNX', 'PyTorch')):
        (boxes, scores, labels), (o_boxes, o_scores, o_labels) = sides[name], sides[other]
        must = scores > cut_off(o_scores) + limit
        found = matched_fraction(boxes[must], labels[must], o_boxes, o_labels, 0.99)
        if found < 0.99:
            raise RuntimeError(
                f'ONNX and PyTorch differ: {found:.1%} of the {int(must.sum())} {name} '
                f'detections have a match of the same class (IoU >= 0.99) in the {other} output'
            )
    boxes, scores, labels = onnx_outs[:3]
    ref_boxes, ref_scores, ref_labels = torch_outs[:3]
    pairs = []
    if len(scores) and len(ref_scores):
        iou = box_iou(np.asarray(boxes, np.float64), np.asarray(ref_boxes, np.float64))
        iou[labels[:, None] != ref_labels[None, :]] = -1
        pairs = [(i, int(iou[i].argmax())) for i in range(len(boxes)) if iou[i].max() >= 0.99]
    if not pairs:
        raise RuntimeError(
            f'ONNX and PyTorch could not be compared: of their {len(scores)} and '
            f'{len(ref_scores)} detections on the check input (score threshold 0), none of one '
            'has a detection of the same class with IoU >= 0.99 on the other'
        )
    onnx_idx, ref_idx = (np.array(v) for v in zip(*pairs))
    differences = [np.abs(scores[onnx_idx] - ref_scores[ref_idx])]
    if len(onnx_outs) > 3:
        masks, ref_masks = onnx_outs[3][onnx_idx], torch_outs[3][ref_idx]
        differences.append(np.abs(masks - ref_masks).reshape(len(pairs), -1).max(1))
    within = np.all([d <= limit for d in differences], axis=0)
    if within.mean() < 0.99:
        raise RuntimeError(
            f'ONNX and PyTorch differ: the scores or mask probabilities of {int((~within).sum())} '
            f'of the {len(pairs)} matched detections differ by more than {limit} (largest: '
            f'{[float(d.max()) for d in differences]})'
        )
    return [float(d[within].max()) for d in differences], len(pairs), int((~within).sum())


if __name__ == '__main__':
    main()
