"""tools/deployment: ONNX export of detectors, segmentors and the backbone, checked in
onnxruntime, and the standalone inference script."""

import contextlib
import copy
import glob
import inspect
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config

import mmunirep  # noqa: F401
from mmunirep.deploy import (
    DetectorForExport,
    DINOForExport,
    UnsupportedModelError,
    exportable_detector,
)
from mmunirep.deploy.tensorrt import tensorrt_parser_issues
from mmunirep.deploy.verify import custom_operator_domains
from mmunirep.models import reparameterize_unireplknet
from mmunirep.utils import build_model, load_model_weights
from mmunirep.utils.checkpoint import CheckpointError
from mmunirep.utils.dummy_inputs import dummy_batch

from helpers import MASK2FORMER, ROOT, SMALL_MASK2FORMER, as_cfg_options, export_onnx, load_tool


@pytest.mark.parametrize('part', ['backbone', 'segmentor'])
def test_export_onnx_matches_pytorch(seg_model, tmp_path, part):
    import onnx

    s = seg_model
    out = str(tmp_path / f'{part}.onnx')
    errors = export_onnx(s, out, part, (64, 96))
    assert max(errors) <= 1e-4
    proto = onnx.load(out)
    ops = {n.op_type for n in proto.graph.node}
    assert 'Conv' in ops and custom_operator_domains(proto) == set()
    assert tensorrt_parser_issues(proto) == []


def test_matmul_adaptive_pool_equals_torch():
    from mmunirep.deploy import AdaptiveAvgPool2dAsMatmul

    x = torch.randn(2, 5, 13, 22)
    for size in (1, 2, 3, 6, (4, 7)):
        torch.testing.assert_close(
            AdaptiveAvgPool2dAsMatmul(size)(x),
            torch.nn.functional.adaptive_avg_pool2d(x, size),
            rtol=1e-5,
            atol=1e-6,
        )


def test_export_refuses_the_other_framework_and_unsupported_parts(seg_model, det_model, tmp_path):
    export = load_tool('export_onnx').main
    out = str(tmp_path / 'x.onnx')
    with pytest.raises(ValueError, match='--part segmentor needs an MMSegmentation config'):
        export([det_model['config'], '--out', out, '--part', 'segmentor'])
    with pytest.raises(ValueError, match='--part detector needs an MMDetection config'):
        export([seg_model['config'], '--out', out, '--part', 'detector'])
    with pytest.raises(
        UnsupportedModelError,
        match=r'rcnn NMS: soft_nms \(supported: '
        r"type='nms'\)",
    ):
        export(
            [
                det_model['config'],
                '--out',
                out,
                '--part',
                'detector',
                '--shape',
                '64',
                '64',
                '--cfg-options',
                'model.test_cfg.rcnn.nms.type=soft_nms',
            ]
        )
    with pytest.raises(
        UnsupportedModelError,
        match=r'rcnn max_per_img: -1 \(supported: a positive number of detections\)',
    ):
        export([det_model['config'], '--out', out, '--part', 'detector', '--shape', '64', '64',
                '--cfg-options', 'model.test_cfg.rcnn.max_per_img=-1'])  # fmt: skip
    # class names that do not name the head's 3 classes
    with pytest.raises(
        ValueError, match=r"predicts 3 classes but 2 class names were found .*\['a', 'b'\]"
    ):
        export([det_model['config'], '--out', out, '--part', 'detector', '--shape', '64', '64',
                '--cfg-options', 'test_dataloader.dataset.metainfo.classes=[a,b]'])  # fmt: skip
    # a one-stage detector
    retinanet = tmp_path / 'retinanet.py'
    retinanet.write_text(RETINANET_CONFIG)
    with pytest.raises(
        UnsupportedModelError,
        match=r'this detector: RetinaNet \(supported: two-stage detectors .*, DINO\)',
    ):
        export([str(retinanet), '--out', out, '--part', 'detector', '--shape', '64', '64'])
    # a checkpoint of another variant than the config's
    with pytest.raises(CheckpointError, match="its backbone is UniRepLKNet-A and the config's"):
        export([det_model['config'], '--checkpoint', det_model['ckpt'], '--out', out, '--part',
                'detector', '--cfg-options', 'model.backbone.arch=t'])  # fmt: skip
    assert not (tmp_path / 'x.onnx').exists()


RETINANET_CONFIG = """_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['mmunirep'], allow_failed_imports=False)
model = dict(backbone=dict(_delete_=True, type='mmunirep.UniRepLKNet', arch='a',
                           out_indices=(0, 1, 2, 3)),
             neck=dict(in_channels=[40, 80, 160, 320]))
"""


def _register_head_with_samples():
    """A decode head whose forward also takes the data samples (as MaskFormer's), which the
    exporter cannot call with the features alone."""
    from mmseg.models.decode_heads import UPerHead
    from mmseg.registry import MODELS

    class HeadWithSamplesForTests(UPerHead):
        def forward(self, inputs, batch_data_samples):
            return super().forward(inputs)

    MODELS.register_module(module=HeadWithSamplesForTests, force=True)


_register_head_with_samples()


@pytest.mark.parametrize(
    'config, options, message',
    [
        (None, ['model.test_cfg.mode=slide', 'model.test_cfg.crop_size=[64,64]',
                'model.test_cfg.stride=[32,32]'],
         r"this test mode: 'slide' \(supported: 'whole'"),
        (None, ['model.decode_head.num_classes=2', 'model.decode_head.out_channels=1'],
         r'decode head: UPerHead with out_channels=1 \(a sigmoid and a threshold per pixel\)'),
        (None, ['model.decode_head.type=HeadWithSamplesForTests'],
         r'decode head: HeadWithSamplesForTests, whose forward takes more than the features'),
        (None, ['model.data_preprocessor.test_cfg.size=[96,96]'],
         r"pads test images to test_cfg.size=\[96, 96\], which the exported model's"),
    ],
    ids=['slide', 'one-channel', 'head-with-samples', 'padded-to-size'],
)  # fmt: skip
def test_the_segmentor_export_refuses_what_it_would_not_repeat(
    seg_model, tmp_path, config, options, message
):
    """A segmentor whose prediction the exported graph and onnx_inference.py would not repeat:
    refused, naming the part, and no file written."""
    config = osp.join(ROOT, 'configs', 'segmentation', config) if config else seg_model['config']
    out = tmp_path / 'seg.onnx'
    with pytest.raises(ValueError, match=message):  # UnsupportedModelError is a ValueError
        load_tool('export_onnx').main(
            [config, '--out', str(out), '--part', 'segmentor', '--shape', '64', '64',
             '--cfg-options', 'model.backbone.init_cfg=None', *options]
        )  # fmt: skip
    assert not out.exists()


def test_the_roi_features_are_roialign_of_the_feature_maps(det_model):
    """With the paper's LayerNorms in the backbone (whose outputs timm lays out channels-last),
    the RoI head's features are mmcv's RoIAlign of the FPN's maps as NCHW tensors: mmcv's compiled
    RoIAlign reads its input's memory as NCHW."""
    from mmcv.ops import roi_align

    cfg = Config.fromfile(det_model['config'])
    cfg.model.backbone.downsample_norm_cfg = None
    model = build_model(cfg).eval()
    model.init_weights()
    inputs, _ = dummy_batch(model, 'mmdet', 1, 128, 160)
    xy = torch.rand(12, 2) * 100
    rois = torch.cat([torch.zeros(12, 1), xy, xy + torch.rand(12, 2) * 30 + 2], dim=1)
    extractor = model.roi_head.bbox_roi_extractor[0]
    with torch.no_grad():
        feats = model.extract_feat(inputs)
        got = extractor(feats[: extractor.num_inputs], rois)
    levels = extractor.map_roi_levels(rois, extractor.num_inputs)
    for level in levels.unique().tolist():
        layer = extractor.roi_layers[level]
        ref = roi_align(
            feats[level].contiguous(), rois[levels == level], layer.output_size,
            layer.spatial_scale, layer.sampling_ratio, 'avg', layer.aligned,
        )  # fmt: skip
        torch.testing.assert_close(got[levels == level], ref, rtol=0, atol=1e-6)


def _detector_module(det_model, score_thr=0.0):
    """The quick start's detector (random weights, random BatchNorm statistics) re-parameterized,
    its detection score threshold lowered so that an untrained model detects something."""
    cfg = Config.fromfile(det_model['config'])
    cfg.model.test_cfg.rcnn.score_thr = score_thr
    model = build_model(cfg)
    load_model_weights(model, det_model['ckpt'])
    return reparameterize_unireplknet(model).eval(), cfg


@contextlib.contextmanager
def recorded_mask_probabilities(model):
    """MMDetection's mask probabilities of the predicted classes, ``(n, 28, 28)``, as its last
    mask head receives them for pasting (under ``record['masks']``)."""
    head = model.roi_head.mask_head
    head = head[-1] if isinstance(head, torch.nn.ModuleList) else head
    signature = inspect.signature(head.predict_by_feat)
    original, record = head.predict_by_feat, {}

    def predict_by_feat(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        preds, labels = bound.arguments['mask_preds'][0], bound.arguments['results_list'][0].labels
        preds = preds[:, 0] if head.class_agnostic else preds[torch.arange(len(labels)), labels]
        record['masks'] = preds if bound.arguments['activate_map'] else preds.sigmoid()
        return original(*args, **kwargs)

    head.predict_by_feat = predict_by_feat
    try:
        yield record
    finally:
        del head.predict_by_feat


def assert_same_mask_probabilities(masks, record):
    """The exported masks equal MMDetection's within 1e-5, which are not all alike (a check that
    could not fail on constant maps)."""
    assert masks.shape == record['masks'].shape
    assert record['masks'].std() > 1e-3
    torch.testing.assert_close(masks, record['masks'], rtol=0, atol=1e-5)


@pytest.mark.parametrize('size', [(150, 170), (96, 300)])
def test_the_detector_rewrites_are_mmdetections_predict(det_model, size):
    """DetectorForExport in PyTorch gives MMDetection's own predictions: the same boxes, scores,
    labels, and the mask probabilities that MMDetection pastes, on images of two sizes."""
    model, _ = _detector_module(det_model)
    inputs, samples = dummy_batch(model, 'mmdet', 1, *size)
    with torch.no_grad(), recorded_mask_probabilities(model) as record:
        ref = model.predict(inputs, copy.deepcopy(samples), rescale=False)[0].pred_instances
        boxes, scores, labels, masks = DetectorForExport(model)(
            inputs, torch.tensor(samples[0].img_shape)
        )  # the threshold of the config
    assert len(ref.scores) == len(scores) > 5
    torch.testing.assert_close(boxes, ref.bboxes, rtol=0, atol=1e-4)
    torch.testing.assert_close(scores, ref.scores, rtol=0, atol=1e-6)
    assert torch.equal(labels, ref.labels)
    assert masks.shape == (len(scores), 28, 28)
    assert_same_mask_probabilities(masks, record)


@pytest.mark.parametrize(
    'config, with_mask, class_agnostic',
    [
        ('example_mmdet_project_mask_rcnn.py', True, False),
        ('example_custom_dataset_cascade_rcnn.py', False, False),
        ('example_custom_dataset_cascade_rcnn.py', False, True),
    ],
)
def test_the_rewrites_of_mask_rcnn_and_a_box_only_cascade_are_their_predict(
    config, with_mask, class_agnostic
):
    """The other detector families the exporter supports: Mask R-CNN (one RoI head) and a
    Cascade R-CNN without a mask head, untrained (random weights, score threshold 0), give
    MMDetection's own boxes, scores and labels, also with NMS over all classes at once; the
    box-only one returns no masks."""
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'detection', config))
    cfg.model.backbone.init_cfg = None
    cfg.model.test_cfg.rpn.max_per_img = 200  # a fifth of the RoI heads' work, the same paths
    cfg.model.test_cfg.rcnn.score_thr = 0.0
    cfg.model.test_cfg.rcnn.max_per_img = 30
    cfg.model.test_cfg.rcnn.nms.class_agnostic = class_agnostic
    torch.manual_seed(0)
    model = build_model(cfg)
    model.init_weights()
    model = reparameterize_unireplknet(model).eval()
    if class_agnostic:  # classes 0 and 1 score alike on every (class-agnostic) box of the cascade
        with torch.no_grad():
            for head in model.roi_head.bbox_head:
                head.fc_cls.weight[1] = head.fc_cls.weight[0]
                head.fc_cls.bias[1] = head.fc_cls.bias[0]
    inputs, samples = dummy_batch(model, 'mmdet', 1, 128, 160)
    record_masks = recorded_mask_probabilities(model) if with_mask else contextlib.nullcontext()
    with torch.no_grad(), record_masks as record:
        ref = model.predict(inputs, copy.deepcopy(samples), rescale=False)[0].pred_instances
        outputs = DetectorForExport(model)(inputs, torch.tensor(samples[0].img_shape))
    assert len(outputs) == (4 if with_mask else 3)
    boxes, scores, labels = outputs[:3]
    assert len(ref.scores) == len(scores) == 30
    torch.testing.assert_close(boxes, ref.bboxes, rtol=0, atol=1e-4)
    torch.testing.assert_close(scores, ref.scores, rtol=0, atol=1e-6)
    assert torch.equal(labels, ref.labels)
    if with_mask:
        assert_same_mask_probabilities(outputs[3], record)
    if class_agnostic:  # each box once, where NMS per class would keep it as class 0 and 1
        assert len(set(map(tuple, boxes.tolist()))) == len(boxes)
        assert {0, 1} <= set(labels.tolist())


def test_the_detector_exports_with_standard_operators_and_dynamic_size(det_model, tmp_path):
    """--part detector: one graph of standard ONNX operators (checked by onnx.checker, no custom
    domain, RoiAlign and NonMaxSuppression among them), run in onnxruntime at another size than
    traced and compared with PyTorch by the tool, with the preprocessing in its metadata."""
    import json

    import onnx

    out = tmp_path / 'det.onnx'
    export_onnx(
        det_model, out, 'detector', (128, 160), '--cfg-options', 'model.test_cfg.rcnn.score_thr=0.0'
    )
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    ops = {n.op_type for n in proto.graph.node}
    assert {'RoiAlign', 'NonMaxSuppression', 'TopK', 'ScatterND'} <= ops
    assert custom_operator_domains(proto) == set()
    assert tensorrt_parser_issues(proto) == []
    assert [i.name for i in proto.graph.input] == ['input', 'image_shape', 'score_threshold']
    assert [o.name for o in proto.graph.output] == ['boxes', 'scores', 'labels', 'masks']
    # the score threshold is the graph's input: a higher one keeps the confident subset
    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    inputs, samples = dummy_batch(_detector_module(det_model)[0], 'mmdet', 1, 96, 128)
    feeds = dict(input=inputs.numpy(), image_shape=np.array(samples[0].img_shape, np.int64))
    every = session.run(None, dict(feeds, score_threshold=np.array([0.0], np.float32)))
    cut = float(np.median(every[1]))
    confident = session.run(None, dict(feeds, score_threshold=np.array([cut], np.float32)))
    assert 0 < len(confident[1]) < len(every[1]) and (confident[1] > cut).all()
    np.testing.assert_array_equal(confident[1], every[1][every[1] > cut])
    meta = json.loads({p.key: p.value for p in proto.metadata_props}['mmunirep'])
    assert meta['task'] == 'detection' and meta['classes'] == ['circle', 'square', 'triangle']
    assert meta['preprocess']['resize'] == dict(scale=[160, 160], keep_ratio=True)
    assert meta['preprocess']['pad_size_divisor'] == 32 and meta['preprocess']['bgr_to_rgb']
    assert meta['postprocess'] == dict(score_thr=0.0, max_per_img=20, mask_thr_binary=0.5)


def test_a_mask2former_exports_as_mmsegmentations_predict(tmp_path):
    """--part segmentor on Mask2Former (shrunk, random weights): the module gives
    MMSegmentation's own seg_logits and label map, and the exported graph (GridSample for the
    pixel decoder's deformable attention, no custom domain, nothing TensorRT's parser states it
    would not import) matches it in onnxruntime on another size than traced (checked by the
    tool, relative error <= 1e-4)."""
    import onnx

    from mmunirep.deploy.segmentor import SegmentorForExport

    out = tmp_path / 'm2f.onnx'
    errors = load_tool('export_onnx').main(
        [MASK2FORMER, '--out', str(out), '--part', 'segmentor', '--shape', '64', '96',
         '--cfg-options', *as_cfg_options(SMALL_MASK2FORMER)]
    )  # fmt: skip
    assert max(errors) <= 1e-4
    proto = onnx.load(str(out))
    assert 'GridSample' in {n.op_type for n in proto.graph.node}
    assert custom_operator_domains(proto) == set()
    assert tensorrt_parser_issues(proto) == []

    cfg = Config.fromfile(MASK2FORMER)
    cfg.merge_from_dict(SMALL_MASK2FORMER)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.init_weights()
    model = reparameterize_unireplknet(model).eval()
    # the last size also padded to 96 x 96 (size_divisor 32): MMSegmentation crops it off
    for h, w, padding in ((64, 96, None), (70, 90, None), (70, 90, dict(size_divisor=32))):
        model.data_preprocessor.test_cfg = padding
        inputs, samples = dummy_batch(model, 'mmseg', 1, h, w)
        assert inputs.shape[-2:] == ((96, 96) if padding else (h, w))
        with torch.no_grad():
            ref = model.predict(inputs, copy.deepcopy(samples))[0]
            logits = SegmentorForExport(model)(inputs)
        assert logits.shape == (1, 150, *inputs.shape[-2:]) and logits.std() > 1e-3
        logits = logits[0, :, :h, :w]
        torch.testing.assert_close(logits, ref.seg_logits.data, rtol=0, atol=1e-6)
        assert torch.equal(logits.argmax(0), ref.pred_sem_seg.data[0])


def _dino_module(dino_model):
    """The shrunk DINO (random weights) re-parameterized, in eval mode."""
    model = build_model(Config.fromfile(dino_model['config']))
    load_model_weights(model, dino_model['ckpt'])
    return reparameterize_unireplknet(model).eval()


@pytest.mark.parametrize('size', [(256, 192), (150, 256)])
def test_the_detr_rewrite_is_mmdetections_predict(dino_model, size):
    """DINOForExport in PyTorch gives DINO's own predictions (MMDetection's predict on an unpadded
    image) on two sizes: the same boxes, scores and labels, and a score threshold keeps the
    subset above it."""
    model = _dino_module(dino_model)
    inputs, samples = dummy_batch(model, 'mmdet', 1, *size)
    shape = torch.tensor(samples[0].img_shape)
    module = exportable_detector(model)
    assert isinstance(module, DINOForExport) and not module.with_mask
    with torch.no_grad():
        ref = model.predict(inputs, copy.deepcopy(samples), rescale=False)[0].pred_instances
        boxes, scores, labels = module(inputs, shape)
        cut = scores.median()
        high = module(inputs, shape, cut.reshape(1))
    assert len(ref.scores) == len(scores) == 50 and scores.std() > 1e-3
    torch.testing.assert_close(boxes, ref.bboxes, rtol=0, atol=1e-4)
    torch.testing.assert_close(scores, ref.scores, rtol=0, atol=1e-6)
    assert torch.equal(labels, ref.labels)
    assert torch.equal(high[1], scores[scores > cut]) and torch.equal(high[0], boxes[scores > cut])


def test_a_dino_exports_with_standard_operators_and_dynamic_size(dino_model, tmp_path):
    """--part detector on DINO: one graph of standard operators (GridSample for the deformable
    attention), no custom domain, nothing TensorRT's parser states it would not import; in
    onnxruntime, on an image of another size and aspect than traced, the detections of
    MMDetection's predict (every one matched at IoU >= 0.99 with its class, scores within 1e-5)."""
    import json

    import onnx
    import onnxruntime as ort

    from mmunirep.deploy.verify import matched_fraction

    out = tmp_path / 'dino.onnx'
    export_onnx(dino_model, out, 'detector', (256, 256))
    proto = onnx.load(str(out))
    ops = {n.op_type for n in proto.graph.node}
    assert {'GridSample', 'TopK'} <= ops and 'RoiAlign' not in ops
    assert custom_operator_domains(proto) == set()
    assert tensorrt_parser_issues(proto) == []
    assert [i.name for i in proto.graph.input] == ['input', 'image_shape', 'score_threshold']
    assert [o.name for o in proto.graph.output] == ['boxes', 'scores', 'labels']
    meta = json.loads({p.key: p.value for p in proto.metadata_props}['mmunirep'])
    assert meta['postprocess'] == dict(score_thr=0.0, max_per_img=50)
    assert meta['preprocess']['pad_size_divisor'] == 1
    assert meta['preprocess']['resize'] == dict(scale=[256, 256], keep_ratio=True)

    model = _dino_module(dino_model)
    inputs, samples = dummy_batch(model, 'mmdet', 1, 176, 256)
    with torch.no_grad():
        ref = model.predict(inputs, copy.deepcopy(samples), rescale=False)[0].pred_instances
    session = ort.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    boxes, scores, labels = session.run(
        None,
        dict(
            input=inputs.numpy(),
            image_shape=np.array(samples[0].img_shape, np.int64),
            score_threshold=np.zeros(1, np.float32),
        ),
    )
    ref_boxes, ref_labels = ref.bboxes.numpy(), ref.labels.numpy()
    assert len(scores) == len(ref.scores) == 50
    assert matched_fraction(ref_boxes, ref_labels, boxes, labels, 0.99) == 1.0
    assert matched_fraction(boxes, labels, ref_boxes, ref_labels, 0.99) == 1.0
    np.testing.assert_allclose(np.sort(scores), np.sort(ref.scores.numpy()), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    'option, message',
    [
        ('model.data_preprocessor.pad_size_divisor=32',
         r'data pre-processor: pad_size_divisor=32 \(supported: pad_size_divisor=1'),
        ('model.test_cfg.max_per_img=0',
         r'max_per_img: 0 \(supported: a positive number up to the queries times the classes, '
         r'300\)'),
    ],
    ids=['padded', 'no-detections'],
)  # fmt: skip
def test_a_dino_the_graph_would_not_repeat_is_refused(dino_model, tmp_path, option, message):
    """Padding would need the transformer's padding masks, which the exported graph leaves out
    (as MMDetection's own export branch); a max_per_img of 0 would keep nothing: refused, naming
    the setting, and no file written."""
    out = tmp_path / 'dino.onnx'
    with pytest.raises(UnsupportedModelError, match=message):
        export_onnx(dino_model, out, 'detector', (256, 256), '--cfg-options', option)
    assert not out.exists()


def test_a_dino_with_softmax_scores_is_refused(dino_model):
    """DINO's head with a softmax over the classes and a background (which MMDetection's DETR
    head can predict with) is not what the exported top-k over sigmoid scores computes."""
    cfg = Config.fromfile(dino_model['config'])
    cfg.model.bbox_head.loss_cls = dict(
        type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0, class_weight=1.0
    )
    with pytest.raises(
        UnsupportedModelError,
        match=r'bbox head: DINOHead with softmax scores \(supported: sigmoid scores\)',
    ):
        exportable_detector(build_model(cfg).eval())


ZOO = sorted(
    glob.glob(osp.join(ROOT, 'configs', 'detection', '*.py'))
    + glob.glob(osp.join(ROOT, 'configs', 'segmentation', '*.py'))
)


@pytest.mark.parametrize('config', ZOO, ids=[osp.basename(c) for c in ZOO])
def test_every_config_of_the_zoo_is_one_the_exporter_takes(config):
    """Each detection and segmentation config builds (on the meta device: no weights) into a
    model whose every part the exporter supports, with the preprocessing it stores readable."""
    from mmunirep.deploy import check_supported
    from mmunirep.deploy.metadata import preprocess_spec
    from mmunirep.deploy.segmentor import check_segmentor_supported
    from mmunirep.utils import framework_of, prepare_cfg

    cfg = prepare_cfg(config)
    with torch.device('meta'):
        model = build_model(cfg)
    detector = framework_of(cfg) == 'mmdet'
    (check_supported if detector else check_segmentor_supported)(model)
    spec = preprocess_spec(cfg)
    assert spec['resize'] is not None and len(spec['mean']) == len(spec['std']) == 3


def test_custom_operator_domains_are_found_in_subgraphs_and_opset_imports():
    from onnx import TensorProto, helper

    def model(branch_domain, extra_opsets=()):
        value = helper.make_tensor_value_info('y', TensorProto.FLOAT, [1])
        branch = helper.make_graph(
            [helper.make_node('Relu', ['x'], ['y'], domain=branch_domain)], 'branch', [], [value]
        )
        graph = helper.make_graph(
            [helper.make_node('If', ['c'], ['y'], then_branch=branch, else_branch=branch)],
            'g',
            [helper.make_tensor_value_info('c', TensorProto.BOOL, [1]),
             helper.make_tensor_value_info('x', TensorProto.FLOAT, [1])],
            [value],
        )  # fmt: skip
        opsets = [helper.make_opsetid('', 17), *(helper.make_opsetid(d, 1) for d in extra_opsets)]
        return helper.make_model(graph, opset_imports=opsets)

    assert custom_operator_domains(model('')) == set()
    assert custom_operator_domains(model('mmdeploy')) == {'mmdeploy'}
    assert custom_operator_domains(model('', ['com.microsoft'])) == {'com.microsoft'}


def test_the_tensorrt_check_names_each_node_the_parser_does_not_import():
    """The static TensorRT check reports, per node, an operator the parser lacks, a custom domain
    and each stated restriction broken (also inside a subgraph; TopK's K also where the graph
    computes it), and nothing for the same operators used within the restrictions."""
    from onnx import TensorProto, helper, numpy_helper

    def const(name, values, dtype=np.int64):
        return numpy_helper.from_array(np.array(values, dtype), name)

    nodes = [
        helper.make_node('Unique', ['x'], ['u'], name='unique'),
        helper.make_node('MyOp', ['x'], ['c'], name='custom', domain='my.domain'),
        helper.make_node('ScatterND', ['x', 'i', 'x'], ['s'], name='scatter', reduction='add'),
        helper.make_node('ScatterND', ['x', 'i', 'x'], ['s2'], name='scatter_ok'),
        helper.make_node('TopK', ['v', 'k_big'], ['tv', 'ti'], name='topk', sorted=0),
        helper.make_node('TopK', ['v', 'k_ok'], ['tv2', 'ti2'], name='topk_ok'),
        # K = min(k, the input's size), as exporting min(nms_pre, n) writes it
        helper.make_node('Shape', ['v'], ['v_shape']),
        helper.make_node('Cast', ['v_shape'], ['n'], to=TensorProto.INT64),
        helper.make_node('Clip', ['k_big', '', 'n'], ['k_big_or_n']),
        helper.make_node('TopK', ['v', 'k_big_or_n'], ['tv3', 'ti3'], name='topk_computed'),
        helper.make_node('Clip', ['k_ok', '', 'n'], ['k_ok_or_n']),
        helper.make_node('Reshape', ['k_ok_or_n', 'one'], ['k_ok_or_n_1d']),
        helper.make_node('TopK', ['v', 'k_ok_or_n_1d'], ['tv4', 'ti4'], name='topk_computed_ok'),
        helper.make_node('TopK', ['v', 'n'], ['tv5', 'ti5'], name='topk_unbounded'),
        helper.make_node('Resize', ['x', '', 'scales'], ['r'], name='resize', mode='cubic'),
        helper.make_node(
            'Resize',
            ['x', '', 'scales'],
            ['r2'],
            name='resize_ok',
            coordinate_transformation_mode='asymmetric',
            nearest_mode='floor',
        ),
        helper.make_node('Shape', ['x'], ['shape']),
        helper.make_node('ReduceSum', ['x', 'shape'], ['rs'], name='reducesum'),
        helper.make_node('ReduceSum', ['x', 'axes'], ['rs2'], name='reducesum_ok'),
        # a slice whose starts and ends follow the input (as the DINO export's) is fine; its axes
        # must be constant
        helper.make_node('Slice', ['x', 'axes', 'shape', 'shape'], ['sl'], name='slice'),
        helper.make_node('Slice', ['x', 'shape', 'shape', 'axes'], ['sl2'], name='slice_ok'),
        helper.make_node('MaxPool', ['x'], ['mp', 'mi'], name='maxpool', kernel_shape=[2, 2]),
        helper.make_node(
            'If',
            ['cond'],
            ['branch'],
            name='if',
            then_branch=helper.make_graph(
                [helper.make_node('Unique', ['x'], ['ux'], name='inner_unique')],
                'then',
                [],
                [helper.make_tensor_value_info('ux', TensorProto.FLOAT, None)],
            ),
            else_branch=helper.make_graph(
                [helper.make_node('Relu', ['x'], ['rx'], name='inner_relu')],
                'else',
                [],
                [helper.make_tensor_value_info('rx', TensorProto.FLOAT, None)],
            ),
        ),
    ]
    graph = helper.make_graph(
        nodes,
        'g',
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ('x', 'v')]
        + [helper.make_tensor_value_info('cond', TensorProto.BOOL, [])],
        [helper.make_tensor_value_info('u', TensorProto.FLOAT, None)],
        [
            const('i', [[0]]),
            const('k_big', [4000]),
            const('k_ok', [1000]),
            const('axes', [1]),
            const('one', [1]),
            const('scales', [1, 1, 2, 2], np.float32),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    issues = tensorrt_parser_issues(model)
    by_node = {}
    for issue in issues:
        node, _, problem = issue.partition(': ')
        by_node.setdefault(node.split(' ')[0], []).append(problem)
    assert by_node == {
        'unique': ['not an operator the parser imports'],
        'custom': ["custom domain 'my.domain'"],
        'scatter': ["reduction 'add' is not supported"],
        'topk': ['sorted must be 1', 'K must be below 3840, can be 4000'],
        'topk_computed': ['K must be below 3840, can be 4000'],
        'topk_unbounded': ['K is computed in the graph with no constant bound below 3840'],
        'resize': ["mode 'cubic' is not supported"],
        'reducesum': ['input 1 (axes) must be a constant, is computed in the graph'],
        'slice': ['input 3 (axes) must be a constant, is computed in the graph'],
        'maxpool': ['the Indices output is not supported'],
        'inner_unique': ['not an operator the parser imports'],
    }


def test_export_checks_a_narrow_map_and_leaves_no_file_when_the_check_fails(
    seg_model, tmp_path, monkeypatch
):
    tool = load_tool('export_onnx')
    out = tmp_path / 'narrow.onnx'
    # the parity check runs on another shape than the traced one: also for a 32-wide input
    errors = tool.main([seg_model['config'], '--out', str(out), '--shape', '64', '32'])
    assert max(errors) <= 1e-4 and out.is_file()

    def disagree(part, path, rtol):
        raise RuntimeError('ONNX and PyTorch differ')

    monkeypatch.setattr(tool, 'verify', disagree)
    out.write_bytes(b'an earlier export')
    with pytest.raises(RuntimeError, match='differ'):
        tool.main([seg_model['config'], '--out', str(out), '--shape', '64', '64'])
    assert out.read_bytes() == b'an earlier export'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['narrow.onnx']


def test_the_parity_check_fails_on_nan(tmp_path):
    tool = load_tool('export_onnx')
    module = torch.nn.Conv2d(3, 4, 3, padding=1)
    path = str(tmp_path / 'conv.onnx')
    torch.onnx.export(
        module,
        (torch.randn(1, 3, 8, 8),),
        path,
        dynamo=False,
        input_names=['input'],
        output_names=['out'],
    )
    with torch.no_grad():
        module.bias[0] = float('nan')  # PyTorch's side now gives NaN
    part = dict(
        module=module,
        check=(torch.randn(1, 3, 8, 8),),
        inputs=['input'],
        metadata=dict(task='backbone', preprocess={}),
    )
    with pytest.raises(RuntimeError, match='differ'):
        tool.verify(part, path, 1e-4)


def test_the_detection_check_compares_what_both_sides_must_keep():
    """With max_per_img detections kept, a detection scoring at the other side's cut-off may be
    missing there; one scoring well above it may not; and a check that pairs nothing fails."""
    compare = load_tool('export_onnx')._compare_detections
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 200, (5, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + 30], 1)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32)
    labels = np.zeros(5, np.int64)
    full = [boxes[:4], scores[:4], labels[:4]]
    # PyTorch kept 4 of 5 (max_per_img=4); ONNX's 4th is another box just below PyTorch's 4th
    near = [np.concatenate([boxes[:3], boxes[4:]]), np.array([0.9, 0.8, 0.7, 0.5995], np.float32),
            labels[:4]]  # fmt: skip
    near[1][3] = 0.5995
    full[1] = np.array([0.9, 0.8, 0.7, 0.5998], np.float32)
    errors, pairs, outside = compare(near, full, 1e-4, 0.0, 4)
    assert pairs == 3 and outside == 0 and errors[0] <= 1e-6
    # a confident detection missing from ONNX
    far = [boxes[1:5], scores[1:5], labels[1:5]]
    with pytest.raises(RuntimeError, match='of the 4 PyTorch detections have a match'):
        compare(far, [boxes[:4], scores[:4], labels[:4]], 1e-4, 0.0, 10)
    # all at the cut-off (an untrained head's scores), so none must match, and no box does
    tied = np.full(4, 0.5, np.float32)
    moved = [boxes[:4] + 100, tied, labels[:4]]
    with pytest.raises(RuntimeError, match='could not be compared: of their 4 and 4 detections'):
        compare(moved, [boxes[:4], tied, labels[:4]], 1e-4, 0.0, 4)
    empty = [np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)]
    with pytest.raises(RuntimeError, match='of their 0 and 0 detections'):
        compare(empty, empty, 1e-4, 0.0, 4)
    # 200 detections with masks: 1% of them may change (a ranked step ordering two near-equal
    # scores differently), not more
    xy = rng.uniform(0, 2000, (200, 2)).astype(np.float32)
    many = [
        np.concatenate([xy, xy + 30], 1),
        rng.uniform(0.3, 1, 200).astype(np.float32),
        np.zeros(200, np.int64),
        rng.uniform(0, 1, (200, 28, 28)).astype(np.float32),
    ]
    other = [a.copy() for a in many]
    other[1][0] -= 0.01  # a score
    other[3][1] += 0.01  # a mask
    errors, pairs, outside = compare(other, many, 1e-4, 0.0, 300)
    assert pairs == 200 and outside == 2 and max(errors) <= 1e-6
    other[1][2] += 0.01  # a third
    with pytest.raises(RuntimeError, match='of 3 of the 200 matched detections differ by more'):
        compare(other, many, 1e-4, 0.0, 300)


@pytest.mark.parametrize(
    'argv, message',
    [
        (['--shape', '16', '64'], 'at least 32 each'),
        (['--part', 'segmentor', '--shape', '64', '80'], 'a multiple of 32'),
        (['--rtol', '0'], '--rtol must be positive'),
    ],
)
def test_export_arguments_are_checked_up_front(seg_model, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        load_tool('export_onnx').main(
            [seg_model['config'], '--out', str(tmp_path / 'x.onnx')] + argv
        )
    assert info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    'config, size',
    [
        ('quickstart_unireplknet_a_shapes.py', (160, 160)),
        ('unireplknet_s_22k_cascade_3x.py', (800, 1344)),
    ],
)
def test_a_detector_traces_at_its_test_pipelines_size_by_default(config, size):
    """Without --shape a detector is traced at its resize scale (landscape), padded to 32."""
    from mmunirep.utils import prepare_cfg

    cfg = prepare_cfg(osp.join(ROOT, 'configs', 'detection', config))
    assert load_tool('export_onnx').detector_input_size(cfg) == size


@pytest.mark.parametrize(
    'config, count, first',
    [
        ('detection/unireplknet_s_22k_cascade_3x.py', 80, 'person'),
        ('segmentation/unireplknet_s_22k_upernet_160k_640.py', 150, 'wall'),
    ],
)
def test_the_classes_of_a_config_that_names_none_are_its_dataset_types(config, count, first):
    """The COCO and ADE20K configs name no classes: the exported file takes their dataset
    types' (MMDetection's CocoDataset, MMSegmentation's ADE20KDataset), with the palettes."""
    from mmunirep.deploy.metadata import dataset_meta

    meta = dataset_meta(Config.fromfile(osp.join(ROOT, 'configs', config)))
    assert len(meta['classes']) == len(meta['palette']) == count and meta['classes'][0] == first


@pytest.mark.parametrize(
    'config, expected',
    [
        ('unireplknet_s_22k_upernet_160k_512.py', ('.jpg', '.png', True)),
        (
            'unireplknet_s_1k_upernet_80k_cityscapes_512x1024.py',
            ('_leftImg8bit.png', '_gtFine_labelTrainIds.png', False),
        ),
        ('quickstart_unireplknet_a_shapes.py', ('.jpg', '.png', False)),
    ],
)
def test_a_segmentor_stores_its_datasets_label_map_conventions(config, expected):
    """ADE20K's and Cityscapes' configs leave the file suffixes to their dataset classes
    (Cityscapes' also reduce_zero_label), the quick start sets them; LoadAnnotations' own
    reduce_zero_label and the metric's ignore_index win over the defaults."""
    from mmunirep.deploy.metadata import segmentation_annotations

    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'segmentation', config))
    spec = segmentation_annotations(cfg)
    assert (spec['img_suffix'], spec['seg_map_suffix'], spec['reduce_zero_label']) == expected
    assert spec['ignore_index'] == 255
    cfg.test_dataloader.dataset.pipeline[-2].reduce_zero_label = not expected[2]
    cfg.test_evaluator.ignore_index = 0
    spec = segmentation_annotations(cfg)
    assert spec['reduce_zero_label'] is (not expected[2]) and spec['ignore_index'] == 0


def test_a_segmentor_whose_dataset_type_is_unknown_exports_without_its_conventions(
    seg_model, tmp_path
):
    """The label maps' conventions serve evaluate_onnx.py only: a test dataset type that is not
    registered (the checkpoint names the classes) leaves them out, with a warning, instead of
    refusing the export."""
    import logging

    from mmengine.logging import MMLogger

    out = str(tmp_path / 'seg.onnx')
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        export_onnx(
            seg_model, out, 'segmentor', (64, 64),
            '--cfg-options', 'test_dataloader.dataset.type=NoSuchDataset',
        )  # fmt: skip
    finally:
        logger.removeHandler(handler)
    _, meta = load_tool('onnx_inference').load_model(out)
    assert 'annotations' not in meta and meta['classes']
    messages = [r.getMessage() for r in records]
    expected = "conventions are not stored (the type 'NoSuchDataset' is not registered"
    assert any(expected in m for m in messages), messages
