"""tools/deployment/onnx_inference.py: the preprocessing and post-processing of MMDetection and
MMSegmentation repeated with numpy and cv2, end to end on exported models, and in a virtual
environment with only onnxruntime, numpy and opencv-python."""

import json
import os
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate
from mmengine.registry import init_default_scope

import mmunirep  # noqa: F401
from mmunirep.utils import build_model

from helpers import (
    DET_QUICKSTART,
    MASK2FORMER,
    SEG_QUICKSTART,
    SMALL_MASK2FORMER,
    as_cfg_options,
    export_onnx,
    ground_truth_from_predictions,
    load_tool,
    tool_path,
)

inference = load_tool('onnx_inference')


def _image(tmp_path, height, width, seed=0):
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), (5, 5), 2)
    path = str(tmp_path / f'image_{height}x{width}.png')
    cv2.imwrite(path, image)
    return path, image


def _pipeline_input(config, path, cfg_options=None):
    """What MMDetection's / MMSegmentation's test pipeline and data pre-processor make of an
    image: the input tensor and the data sample's meta."""
    from mmunirep.utils import framework_of

    cfg = Config.fromfile(config)
    cfg.merge_from_dict(cfg_options or {})
    init_default_scope(framework_of(cfg))
    steps = [t for t in cfg.test_dataloader.dataset.pipeline if 'LoadAnnotations' not in t.type]
    data = Compose(steps)(dict(img_path=path, img_id=0))
    model = build_model(cfg)
    batch = model.data_preprocessor(pseudo_collate([data]), False)
    return batch['inputs'], batch['data_samples'][0], model


@pytest.mark.parametrize('config', [DET_QUICKSTART, SEG_QUICKSTART], ids=['det', 'seg'])
@pytest.mark.parametrize('size', [(97, 211), (300, 180)])
@pytest.mark.parametrize(
    'cfg_options',
    [{}, {'test_dataloader.dataset.pipeline.1.scale': 144}],  # one number: a square scale
    ids=['scale', 'int-scale'],
)
def test_preprocessing_is_the_frameworks(tmp_path, config, size, cfg_options):
    path, image = _image(tmp_path, *size)
    expected, sample, model = _pipeline_input(config, path, cfg_options)
    from mmunirep.deploy.metadata import preprocess_spec

    cfg = Config.fromfile(config)
    cfg.merge_from_dict(cfg_options)
    x, shape, scale = inference.preprocess(image, preprocess_spec(cfg))
    assert x.shape == tuple(expected.shape)
    np.testing.assert_allclose(x, expected.numpy(), rtol=0, atol=1e-5)
    assert shape == tuple(sample.img_shape)
    if config == DET_QUICKSTART:  # boxes are scaled back with it (MMSegmentation resizes maps)
        np.testing.assert_allclose(scale, sample.scale_factor, rtol=1e-7)


def test_pasted_masks_are_mmdetections(tmp_path):
    from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask

    rng = np.random.default_rng(1)
    masks = rng.random((6, 28, 28)).astype(np.float32)
    boxes = np.array(
        [
            [10.3, 5.7, 60.2, 40.9],
            [0.0, 0.0, 90.0, 70.0],
            [-5, 30.2, 20.4, 85.1],
            [70.5, 50.5, 71.2, 52.9],
            [33.3, 12.1, 52.8, 69.6],
            [80.1, 2.2, 100, 20],
        ],
        np.float32,
    )
    h, w = 72, 96
    for m, b in zip(masks, boxes):
        ref, spatial = _do_paste_mask(
            torch.from_numpy(m)[None, None], torch.from_numpy(b)[None], h, w, skip_empty=True
        )
        expected = np.zeros((h, w), bool)
        expected[spatial] = (ref[0] >= 0.5).numpy()
        got = inference.paste_mask(m, b, h, w, 0.5)
        assert (got != expected).sum() <= 1, (b, (got != expected).sum())


def test_masks_in_the_json_are_cocos_rle():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(2)
    for shape in ((5, 7), (40, 31), (1, 1)):
        mask = rng.random(shape) > 0.6
        rle = inference.rle_encode(mask)
        decoded = mask_utils.decode(mask_utils.frPyObjects(rle, *shape))
        assert np.array_equal(decoded.astype(bool), mask)
    assert inference.rle_encode(np.ones((3, 2), bool))['counts'] == [0, 6]


@pytest.mark.parametrize(
    'cfg_options',
    [
        {},
        # test images padded to a multiple of 64 (the pipeline gives multiples of 32), and the
        # logits resized with align_corners
        {
            'model.data_preprocessor.test_cfg': dict(size_divisor=64),
            'model.decode_head.align_corners': True,
        },
    ],
    ids=['plain', 'padded-align-corners'],
)
def test_a_segmentor_labels_the_pixels_as_mmsegmentation(seg_model, tmp_path, cfg_options):
    path, image = _image(tmp_path, 100, 90, seed=3)
    out = tmp_path / 'seg.onnx'
    options = [
        f'{k}={v}' for k, v in cfg_options.items() if k != 'model.data_preprocessor.test_cfg'
    ]
    if cfg_options:
        options.append('model.data_preprocessor.test_cfg.size_divisor=64')
    export_onnx(
        seg_model, out, 'segmentor', (64, 64), *(['--cfg-options', *options] if options else [])
    )
    inputs, sample, model = _pipeline_input(seg_model['config'], path, cfg_options)
    if cfg_options:
        assert inputs.shape[-2:] != tuple(sample.img_shape)  # the padding is there to remove
    from mmunirep.utils import load_model_weights

    load_model_weights(model, seg_model['ckpt'])
    with torch.no_grad():
        result = model.eval().predict(inputs, [sample])[0]
    expected = result.pred_sem_seg.data[0].numpy()
    # the logits, which any misplaced pixel changes (an untrained model's labels may not)
    expected_logits = result.seg_logits.data.numpy().transpose(1, 2, 0)
    session, meta = inference.load_model(str(out))
    logits = inference.segmentation_logits(session, meta, image)
    np.testing.assert_allclose(logits, expected_logits, rtol=0, atol=1e-4 * np.abs(logits).max())
    labels = inference.main(
        [
            str(out),
            path,
            '--out-label-map',
            str(tmp_path / 'labels.png'),
            '--out-file',
            str(tmp_path / 'vis.png'),
        ]
    )
    assert labels.shape == expected.shape == image.shape[:2]
    assert (labels == expected).mean() >= 0.999
    assert np.array_equal(cv2.imread(str(tmp_path / 'labels.png'), cv2.IMREAD_UNCHANGED), labels)
    assert cv2.imread(str(tmp_path / 'vis.png')).shape == image.shape


@pytest.mark.slow
def test_a_mask2former_labels_the_pixels_as_mmsegmentation(tmp_path):
    """An exported Mask2Former (shrunk, random weights) through onnx_inference.py on an image
    file: the config's keep-ratio resize, padding to a multiple of 32 (which the ADE20K 640
    config does not pad; the 512 recipes do) and the logits resized back give MMSegmentation's
    own seg_logits and label map for the same file."""
    from mmunirep.utils import load_model_weights

    options = dict(SMALL_MASK2FORMER, **{'model.data_preprocessor.test_cfg.size_divisor': 32})
    cfg = Config.fromfile(MASK2FORMER)
    cfg.merge_from_dict(options)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.init_weights()
    ckpt = str(tmp_path / 'm2f.pth')
    torch.save({'state_dict': model.state_dict()}, ckpt)
    out = tmp_path / 'm2f.onnx'
    export_onnx(
        dict(config=MASK2FORMER, ckpt=ckpt), out, 'segmentor', (64, 64),
        '--cfg-options', *as_cfg_options(options),
    )  # fmt: skip
    path, image = _image(tmp_path, 100, 90, seed=3)
    inputs, sample, model = _pipeline_input(MASK2FORMER, path, options)
    assert inputs.shape[-2:] != tuple(sample.img_shape)  # 711 x 640 padded to 736 x 640
    load_model_weights(model, ckpt)
    with torch.no_grad():
        result = model.eval().predict(inputs, [sample])[0]
    session, meta = inference.load_model(str(out))
    logits = inference.segmentation_logits(session, meta, image)
    expected = result.seg_logits.data.numpy().transpose(1, 2, 0)
    assert expected.std() > 1e-3
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    labels = inference.main([str(out), path, '--out-label-map', str(tmp_path / 'labels.png')])
    assert (labels == result.pred_sem_seg.data[0].numpy()).mean() >= 0.999


def test_a_detector_writes_its_drawing_and_json(det_model, tmp_path, capsys):
    out = tmp_path / 'det.onnx'
    export_onnx(
        det_model, out, 'detector', (128, 128), '--cfg-options', 'model.test_cfg.rcnn.score_thr=0.0'
    )
    path, image = _image(tmp_path, 110, 150, seed=4)
    dets = inference.main(
        [
            str(out),
            path,
            '--out-file',
            str(tmp_path / 'vis.png'),
            '--out-json',
            str(tmp_path / 'dets.json'),
            '--score-thr',
            '0.0',
        ]
    )
    items = json.loads((tmp_path / 'dets.json').read_text())
    assert len(items) == len(dets['scores']) > 0
    assert {i['class_name'] for i in items} <= {'circle', 'square', 'triangle'}
    assert all(len(i['bbox']) == 4 and i['mask']['size'] == [110, 150] for i in items)
    drawn = cv2.imread(str(tmp_path / 'vis.png'))
    assert drawn.shape == image.shape and np.abs(drawn.astype(int) - image).mean() > 1
    # the outputs get the usual file mode (the umask's), not the temporary file's private one
    umask = os.umask(0)
    os.umask(umask)
    for name in ('vis.png', 'dets.json'):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~umask, name
    with pytest.raises(SystemExit) as info:
        inference.main([str(out), path])  # no output asked for
    assert info.value.code == 2 and 'give at least one of --out-file' in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        inference.main([str(out), path, '--out-file', str(tmp_path / 'v.png'), '--score-thr', '2'])
    assert info.value.code == 2
    assert '--score-thr is a score between 0 and 1, got 2.0' in capsys.readouterr().err
    with pytest.raises(ValueError, match='a 2000x1 image resizes to 160x0 under the scale'):
        inference.preprocess(np.zeros((1, 2000, 3), np.uint8), load_metadata(out)['preprocess'])
    not_onnx, not_image = tmp_path / 'not.onnx', tmp_path / 'not.png'
    not_onnx.write_text('text')
    not_image.write_bytes(b'\x00' * 64)
    with pytest.raises(ValueError, match='not an ONNX model'):
        inference.main([str(not_onnx), path, '--out-file', str(tmp_path / 'v.png')])
    with pytest.raises(FileNotFoundError, match='no such model file'):
        inference.main([str(tmp_path / 'absent.onnx'), path, '--out-file', str(tmp_path / 'v.png')])
    with pytest.raises(ValueError, match='not an image OpenCV can decode'):
        inference.main([str(out), str(not_image), '--out-file', str(tmp_path / 'v.png')])
    assert not (tmp_path / 'v.png').exists()


def load_metadata(path):
    return inference.load_model(str(path))[1]


def test_a_lower_score_threshold_than_the_configs_keeps_more(det_model, tmp_path):
    """--score-thr below the config's score_thr (stored at export) runs the graph at the lower
    one, so the drawing and the JSON hold the detections between the two."""
    out = tmp_path / 'det.onnx'
    export_onnx(
        det_model, out, 'detector', (128, 128), '--cfg-options', 'model.test_cfg.rcnn.score_thr=0.6'
    )
    assert load_metadata(out)['postprocess']['score_thr'] == 0.6
    path, _ = _image(tmp_path, 110, 150, seed=4)
    dets = inference.main(
        [str(out), path, '--out-json', str(tmp_path / 'd.json'), '--score-thr', '0.1']
    )
    assert len(dets['scores']) > 0 and (dets['scores'] > 0.1).all() and dets['scores'].min() < 0.6
    assert len(json.loads((tmp_path / 'd.json').read_text())) == len(dets['scores'])


@pytest.mark.slow
def test_the_script_runs_with_only_onnxruntime_numpy_and_opencv(seg_model, tmp_path):
    """A fresh virtual environment with onnxruntime, numpy and opencv-python (the versions of this
    one) and nothing else: the script runs a segmentor end to end."""
    from importlib.metadata import version

    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
    python = str(venv / 'bin' / 'python')
    packages = [f'{name}=={version(name)}' for name in ('onnxruntime', 'numpy', 'opencv-python')]
    proc = subprocess.run(
        [python, '-m', 'pip', 'install', '-q', '--disable-pip-version-check', *packages],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / 'seg.onnx'
    export_onnx(seg_model, out, 'segmentor', (64, 64))
    path, image = _image(tmp_path, 80, 100, seed=5)
    env = dict(os.environ, PYTHONPATH='')
    proc = subprocess.run(
        [
            python,
            tool_path('onnx_inference'),
            str(out),
            path,
            '--out-file',
            str(tmp_path / 'vis.png'),
            '--out-label-map',
            str(tmp_path / 'labels.png'),
        ],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert cv2.imread(str(tmp_path / 'labels.png'), cv2.IMREAD_UNCHANGED).shape == (80, 100)
    listed = subprocess.run(
        [python, '-m', 'pip', 'list', '--format=freeze'], capture_output=True, text=True, check=True
    ).stdout
    installed = {line.split('==')[0].lower() for line in listed.split()}
    assert not installed & {'torch', 'mmcv', 'mmdet', 'mmsegmentation', 'mmengine', 'mmunirep'}


@pytest.mark.slow
def test_the_exported_trained_detector_scores_as_the_test_tool(trained_det, tmp_path):
    """On the validation images of the trained quick-start detector: the ONNX model, scored by
    evaluate_onnx.py, has bbox and segm mAP (pycocotools) within 0.5 points of tools/test.py's
    on the same checkpoint, and at least 99% of PyTorch's detections with a score of at least 0.3
    have a detection of the same class with IoU >= 0.95 in the ONNX output."""
    config, ckpt, data = trained_det['config'], trained_det['ckpt'], trained_det['data']
    preds = str(tmp_path / 'preds.pkl')
    metrics = load_tool('test').main([config, ckpt, '--out', preds, '--work-dir', str(tmp_path)])
    assert metrics['coco/bbox_mAP'] > 0.1 and metrics['coco/segm_mAP'] > 0.1, metrics
    out = str(tmp_path / 'det.onnx')
    export_onnx(trained_det, out, 'detector', (160, 160))
    scores = load_tool('evaluate_onnx').main(
        [
            out,
            '--ann-file',
            osp.join(data, 'annotations', 'instances_val.json'),
            '--img-dir',
            osp.join(data, 'val'),
            '--pytorch-predictions',
            preds,
            '--out-json',
            str(tmp_path / 'results.json'),
        ]
    )
    for iou_type in ('bbox', 'segm'):
        assert abs(scores[f'{iou_type}_mAP'] - metrics[f'coco/{iou_type}_mAP']) <= 0.005, scores
    assert scores['compared'] >= 10 and scores['matched'] / scores['compared'] >= 0.99, scores
    results = json.loads((tmp_path / 'results.json').read_text())
    assert len(results) > 0 and {'image_id', 'bbox', 'score', 'category_id'} <= set(results[0])


@pytest.mark.slow
def test_an_exported_dino_scores_as_the_test_tool(dino_model, tmp_path):
    """A shrunk DINO (random weights), exported and scored by evaluate_onnx.py, against
    tools/test.py on the same checkpoint and images. Untrained, it scores about 0 on the shapes'
    annotations, which a wrong evaluation would give too; so both score against annotations made
    of PyTorch's own 3 best detections per image, where the mAP is far from 0. The mAPs agree
    within 0.5 points and every one of PyTorch's detections (all 50 per image, score threshold 0)
    has an ONNX detection of the same class with IoU >= 0.95: the unpadded keep-ratio resize and
    the boxes scaled back to the image are the framework's."""
    config, ckpt, data = dino_model['config'], dino_model['ckpt'], dino_model['data']
    test = load_tool('test').main
    first = str(tmp_path / 'first.pkl')
    test([config, ckpt, '--out', first, '--work-dir', str(tmp_path / 'first')])
    own_gt = str(tmp_path / 'own_gt.json')
    ann_file = osp.join(data, 'annotations', 'instances_val.json')
    ground_truth_from_predictions(first, ann_file, own_gt, masks=False, per_image=3)
    preds = str(tmp_path / 'preds.pkl')
    metrics = test(
        [config, ckpt, '--out', preds, '--work-dir', str(tmp_path / 'own'), '--cfg-options',
         f'test_dataloader.dataset.ann_file={own_gt}', f'test_evaluator.ann_file={own_gt}']
    )  # fmt: skip
    assert metrics['coco/bbox_mAP'] > 0.5, metrics
    out = str(tmp_path / 'dino.onnx')
    export_onnx(dino_model, out, 'detector', (256, 256))
    scores = load_tool('evaluate_onnx').main(
        [out, '--ann-file', own_gt, '--img-dir', osp.join(data, 'val'),
         '--pytorch-predictions', preds, '--match-score', '0']
    )  # fmt: skip
    assert abs(scores['bbox_mAP'] - metrics['coco/bbox_mAP']) <= 0.005, (scores, metrics)
    assert scores['compared'] == 100 and scores['matched'] == scores['compared'], scores


def test_evaluation_refuses_classes_the_annotations_lack(det_model, tmp_path, capsys):
    out = str(tmp_path / 'det.onnx')
    export_onnx(det_model, out, 'detector', (128, 128))
    ann = json.loads(open(osp.join(det_model['data'], 'annotations', 'instances_val.json')).read())
    ann['categories'][0]['name'] = 'hexagon'
    ann_file = tmp_path / 'renamed.json'
    ann_file.write_text(json.dumps(ann))
    evaluate = load_tool('evaluate_onnx')
    with pytest.raises(ValueError, match=r"classes \['circle'\] are not categories.*hexagon"):
        evaluate.main(
            [out, '--ann-file', str(ann_file), '--img-dir', osp.join(det_model['data'], 'val')]
        )
    with pytest.raises(SystemExit) as info:
        evaluate.main([out, '--ann-file', str(ann_file), '--img-dir', str(tmp_path / 'none')])
    assert info.value.code == 2
    assert f'--img-dir: {tmp_path / "none"} does not exist' in capsys.readouterr().err
    img_dir = osp.join(det_model['data'], 'val')
    not_coco, not_json = tmp_path / 'not_coco.json', tmp_path / 'not.json'
    not_coco.write_text('{"a": 1}')
    not_json.write_text('text')
    for bad in (not_coco, not_json):
        with pytest.raises(ValueError, match='is not a COCO-format annotation file'):
            evaluate.main([out, '--ann-file', str(bad), '--img-dir', img_dir])
    good_ann = osp.join(det_model['data'], 'annotations', 'instances_val.json')
    with pytest.raises(ValueError, match="is not the .pkl of a detector's predictions"):
        evaluate.main(
            [
                out,
                '--ann-file',
                good_ann,
                '--img-dir',
                img_dir,
                '--pytorch-predictions',
                str(not_json),
            ]
        )
    with pytest.raises(ValueError, match='is an exported detection: give --ann-file'):
        evaluate.main([out, '--img-dir', img_dir])
    with pytest.raises(ValueError, match='detection: --ann-dir, --no-reduce-zero-label do not'):
        evaluate.main(
            [out, '--ann-file', good_ann, '--img-dir', img_dir, '--ann-dir', img_dir]
            + ['--no-reduce-zero-label']
        )


@pytest.fixture(scope='module')
def seg_evaluation(seg_model, tmp_path_factory):
    """The segmentation fixture, its classifier's weights drawn again at unit scale and without
    bias, so that the labels vary across the image rather than one class winning everywhere;
    exported, and tools/test.py's metrics and label maps (--out DIR) for it on the validation
    images."""
    tmp = tmp_path_factory.mktemp('seg_evaluation')
    ckpt = torch.load(seg_model['ckpt'], map_location='cpu', weights_only=False)
    weights = ckpt['state_dict']
    torch.manual_seed(1)
    weight = torch.randn_like(weights['decode_head.conv_seg.weight'])
    # each class's weights sum to 0: the features' common (positive) part cancels
    weights['decode_head.conv_seg.weight'] = weight - weight.mean(1, keepdim=True)
    weights['decode_head.conv_seg.bias'].zero_()
    seg_model = dict(seg_model, ckpt=str(tmp / 'seg.pth'))
    torch.save(ckpt, seg_model['ckpt'])
    labels = str(tmp / 'pytorch_labels')
    metrics = load_tool('test').main(
        [seg_model['config'], seg_model['ckpt'], '--out', labels, '--work-dir', str(tmp)]
    )
    model = str(tmp / 'seg.onnx')
    export_onnx(seg_model, model, 'segmentor', (64, 64))
    val = osp.join(seg_model['data'], '{}', 'validation')
    return dict(
        model=model,
        metrics=metrics,
        labels=labels,
        img_dir=val.format('images'),
        ann_dir=val.format('annotations'),
    )


def test_the_exported_segmentor_scores_as_the_test_tool(seg_evaluation):
    """evaluate_onnx.py's aAcc, mIoU and mAcc (MMSegmentation's IoUMetric, in percent) are within
    0.5 points of tools/test.py's on the same checkpoint and images, and at least 99% of the
    pixels get the label that tools/test.py --out wrote for them."""
    ev = seg_evaluation
    names = sorted(os.listdir(ev['labels']))
    assert len(names) == 2, names
    pytorch = [cv2.imread(osp.join(ev['labels'], n), cv2.IMREAD_UNCHANGED) for n in names]
    # the labels vary across each image: a mirrored map would fall well short of 99% agreement
    mirrored = np.mean([np.mean(m == m[:, ::-1]) for m in pytorch])
    assert mirrored < 0.9, mirrored
    scores = load_tool('evaluate_onnx').main(
        [
            ev['model'],
            '--img-dir',
            ev['img_dir'],
            '--ann-dir',
            ev['ann_dir'],
            '--pytorch-predictions',
            ev['labels'],
        ]
    )
    for key in ('aAcc', 'mIoU', 'mAcc'):
        assert abs(scores[key] - ev['metrics'][key]) <= 0.5, (key, scores, ev['metrics'])
    assert scores['pixel_agreement'] >= 0.99, scores


def test_segmentation_scoring_follows_reduce_zero_label(seg_evaluation, tmp_path):
    """Label maps in ADE20K's convention (0 ignored, class k stored as k + 1): PyTorch's own
    predictions written that way, with a band of 0s, are matched pixel for pixel under
    --reduce-zero-label, and read as other classes without it."""
    ev = seg_evaluation
    ann_dir = tmp_path / 'ade_labels'
    ann_dir.mkdir()
    for name in os.listdir(ev['labels']):
        labels = cv2.imread(osp.join(ev['labels'], name), cv2.IMREAD_UNCHANGED)
        shifted = labels.astype(np.uint8) + 1
        shifted[:, :8] = 0  # ignored
        cv2.imwrite(str(ann_dir / name), shifted)
    evaluate = load_tool('evaluate_onnx').main
    argv = [ev['model'], '--img-dir', ev['img_dir'], '--ann-dir', str(ann_dir)]
    assert evaluate(argv + ['--reduce-zero-label'])['aAcc'] >= 99.0
    assert evaluate(argv + ['--no-reduce-zero-label'])['aAcc'] <= 50.0


def test_segmentation_scoring_refuses_what_does_not_fit(seg_evaluation, tmp_path):
    ev = seg_evaluation
    evaluate = load_tool('evaluate_onnx').main
    base = [ev['model'], '--img-dir', ev['img_dir']]
    with pytest.raises(ValueError, match='is an exported segmentation: give --ann-dir'):
        evaluate(base)
    ann_file = tmp_path / 'ann.json'
    ann_file.write_text('{}')
    with pytest.raises(ValueError, match='--ann-file, --out-json do not apply'):
        evaluate(
            base + ['--ann-dir', ev['ann_dir'], '--ann-file', str(ann_file), '--out-json', 'o.json']
        )
    with pytest.raises(ValueError, match=r"no image ending in '\.tif' under"):
        evaluate(base + ['--ann-dir', ev['ann_dir'], '--img-suffix', '.tif'])
    with pytest.raises(ValueError, match=r"2 of 2 images have no label map ending in '_gt\.png'"):
        evaluate(base + ['--ann-dir', ev['ann_dir'], '--seg-map-suffix', '_gt.png'])
    with pytest.raises(ValueError, match='is not the folder of label maps'):
        evaluate(base + ['--ann-dir', ev['ann_dir'], '--pytorch-predictions', str(ann_file)])
    small = tmp_path / 'small_labels'
    small.mkdir()
    for name in os.listdir(ev['ann_dir']):
        labels = cv2.imread(osp.join(ev['ann_dir'], name), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(small / name), labels[:32, :48])
    with pytest.raises(ValueError, match=r'the label map of .*\.jpg is 48x32, the image 64x64'):
        evaluate(base + ['--ann-dir', str(small)])
    empty = tmp_path / 'no_labels'
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match='--pytorch-predictions: no label map'):
        evaluate(base + ['--ann-dir', ev['ann_dir'], '--pytorch-predictions', str(empty)])


def test_segmentation_scoring_asks_for_the_conventions_a_file_lacks(seg_evaluation, tmp_path):
    """A segmentor exported before the label-map conventions were stored: the options give them."""
    import onnx

    from mmunirep.deploy.metadata import write_metadata

    ev = seg_evaluation
    _, meta = inference.load_model(ev['model'])
    del meta['annotations']
    proto = onnx.load(ev['model'])
    write_metadata(proto, meta)
    old = str(tmp_path / 'old.onnx')
    onnx.save(proto, old)
    evaluate = load_tool('evaluate_onnx').main
    argv = [old, '--img-dir', ev['img_dir'], '--ann-dir', ev['ann_dir']]
    with pytest.raises(ValueError, match='give --img-suffix, --seg-map-suffix, --reduce-zero-l'):
        evaluate(argv)
    conventions = ['--img-suffix', '.jpg', '--seg-map-suffix', '.png', '--no-reduce-zero-label']
    assert abs(evaluate(argv + conventions)['aAcc'] - ev['metrics']['aAcc']) <= 0.5
