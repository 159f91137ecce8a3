"""What the tests share: loading a script of tools/ as a module (and running tools/test.py), the
backbone's and the op's reference helpers, tiny configs on generated data, a recording
torch.compile backend."""

import contextlib
import importlib.util
import itertools
import os.path as osp
import pickle

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET_QUICKSTART = osp.join(ROOT, 'configs', 'detection', 'quickstart_unireplknet_a_shapes.py')
SEG_QUICKSTART = osp.join(ROOT, 'configs', 'segmentation', 'quickstart_unireplknet_a_shapes.py')
# where each script the tests run lives (the tools are not a package)
SCRIPTS = dict(
    train='tools/train.py',
    test='tools/test.py',
    get_flops='tools/analysis_tools/get_flops.py',
    benchmark='tools/analysis_tools/benchmark.py',
    convert_checkpoint='tools/model_converters/convert_checkpoint.py',
    reparameterize='tools/model_converters/reparameterize.py',
    export_onnx='tools/deployment/export_onnx.py',
    onnx_inference='tools/deployment/onnx_inference.py',
    evaluate_onnx='tools/deployment/evaluate_onnx.py',
    make_shapes_coco='tools/misc/make_shapes_coco.py',
    make_shapes_ade20k='tools/misc/make_shapes_ade20k.py',
    image_demo='demo/image_demo.py',
)


def tool_path(name: str) -> str:
    """The absolute path of the script ``name`` (a key of :data:`SCRIPTS`)."""
    return osp.join(ROOT, SCRIPTS[name])


def load_tool(name: str):
    """The script ``name`` (a key of :data:`SCRIPTS`) as a module, so tests call its ``main``."""
    spec = importlib.util.spec_from_file_location(f'_tool_{name}', tool_path(name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_test(config, ckpt, out, deploy=False):
    """tools/test.py on ``ckpt`` with ``--out out`` (a .pkl file), the backbone re-parameterized
    with ``deploy``: returns its metrics and the predictions it dumped."""
    argv = [str(config), str(ckpt), '--out', str(out), '--work-dir', str(out) + '_work']
    if deploy:
        argv += ['--cfg-options', 'model.backbone.deploy=True']
    metrics = load_tool('test').main(argv)
    with open(out, 'rb') as f:
        return metrics, pickle.load(f)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine, GRN gamma/beta and layer scales, so that every folded term
    matters (a fresh model has zero GRN parameters and 1e-6 layer scales)."""
    from mmunirep.models.backbones.unireplknet import GRN, UniRepLKNetBlock

    g = torch.Generator().manual_seed(seed)

    def rand(t, lo, hi):
        t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                rand(m.running_mean, -0.5, 0.5)
                rand(m.running_var, 0.5, 2.0)
                rand(m.weight, 0.5, 1.5)
                rand(m.bias, -0.5, 0.5)
            elif isinstance(m, GRN):
                rand(m.gamma, -0.5, 0.5)
                if m.use_bias:
                    rand(m.beta, -0.5, 0.5)
            elif isinstance(m, UniRepLKNetBlock) and m.gamma is not None:
                rand(m.gamma, 0.2, 1.0)
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return ((a - b).abs().max() / b.abs().max()).item()


def conv_reference(x, w, b):
    """The depthwise conv of ``x`` in fp64 with autograd: (x64, w64, b64, y64)."""
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_() if b is not None else None
    y = F.conv2d(x64, w64, b64, padding=w.shape[-1] // 2, groups=x.shape[1])
    return x64, w64, b64, y


# the op's tolerances against fp64, relative to each tensor's largest value
CONV_TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
    torch.bfloat16: dict(rtol=5e-2, atol=5e-2),
    torch.float64: dict(rtol=1e-10, atol=1e-10),
}


@contextlib.contextmanager
def visualizers_isolated():
    """No mmengine visualizer inside the block, and those there were before it afterwards. They
    are process-wide (ManagerMixin): a runner takes the visualizer named 'visualizer' if one
    exists, of whatever framework and with whichever save_dir its creator gave, and its
    visualization hook the one created last. A tool run is one framework per process; a test
    that creates visualizers of one framework must not leave them to a later test's runner."""
    from mmengine.visualization import Visualizer

    def classes(cls):
        yield cls
        for sub in cls.__subclasses__():
            yield from classes(sub)

    saved = {cls: cls._instance_dict.copy() for cls in set(classes(Visualizer))}
    for cls in saved:
        cls._instance_dict.clear()
    try:
        yield
    finally:
        # classes first imported inside the block had no instances before it
        for cls in set(classes(Visualizer)):
            cls._instance_dict.clear()
            cls._instance_dict.update(saved.get(cls, {}))


def export_onnx(model: dict, out, part: str, shape, *options):
    """tools/deployment/export_onnx.py on a test model (a dict with its ``config`` and ``ckpt``)
    at ``shape`` (H, W); returns the tool's parity errors."""
    return load_tool('export_onnx').main(
        [model['config'], '--checkpoint', str(model['ckpt']), '--out', str(out), '--part', part,
         '--shape', *(str(v) for v in shape), *options]
    )  # fmt: skip


def tiny_seg_config(tmp_path, data_root: str, **overrides) -> str:
    """The segmentation quick start on ``data_root`` with single-process loaders."""
    extra = '\n'.join(f'{k} = {v!r}' for k, v in overrides.items())
    path = tmp_path / 'tiny_seg.py'
    path.write_text(f"""_base_ = [{SEG_QUICKSTART!r}]
data_root = {data_root!r}
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
default_hooks = dict(logger=dict(interval=1))
{extra}
""")
    return str(path)


def tiny_det_config(tmp_path, data_root: str) -> str:
    """The detection quick start on ``data_root`` with single-process loaders."""
    root = data_root.rstrip('/') + '/'
    ann_val = root + 'annotations/instances_val.json'
    path = tmp_path / 'tiny_det.py'
    path.write_text(f"""_base_ = [{DET_QUICKSTART!r}]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root={root!r}))
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root={root!r}))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file={ann_val!r})
test_evaluator = val_evaluator
default_hooks = dict(logger=dict(interval=1))
""")
    return str(path)


DINO_12E = osp.join(ROOT, 'configs', 'detection', 'unireplknet_b_22k_dino_12e.py')


def tiny_dino_config(tmp_path, data_root: str) -> str:
    """The DINO 12e config shrunk (UniRepLKNet-A with BatchNorm, 1 encoder and 2 decoder layers,
    100 queries, 50 detections per image) on the COCO-format shapes in ``data_root``, tested at
    256 pixels: the exporter's DINO path on a model that runs in a fraction of a second."""
    root = data_root.rstrip('/') + '/'
    path = tmp_path / 'tiny_dino.py'
    path.write_text(f"""_base_ = [{DINO_12E!r}]
model = dict(
    backbone=dict(arch='a', norm_cfg=dict(type='BN'), with_cp=False, drop_path_rate=0.0,
                  init_cfg=None),
    neck=dict(in_channels=[40, 80, 160, 320]),
    num_queries=100,
    encoder=dict(num_layers=1, layer_cfg=dict(ffn_cfg=dict(feedforward_channels=64))),
    decoder=dict(num_layers=2, layer_cfg=dict(ffn_cfg=dict(feedforward_channels=64))),
    bbox_head=dict(num_classes=3),
    dn_cfg=dict(group_cfg=dict(num_dn_queries=10)),
    test_cfg=dict(max_per_img=50),
)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 256), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_root={root!r}, ann_file='annotations/instances_val.json',
                 data_prefix=dict(img='val/'), pipeline=test_pipeline,
                 metainfo=dict(classes=('circle', 'square', 'triangle'))))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file={root + 'annotations/instances_val.json'!r})
test_evaluator = val_evaluator
""")
    return str(path)


MASK2FORMER = osp.join(ROOT, 'configs', 'segmentation', 'unireplknet_b_22k_mask2former_160k_640.py')
# Mask2Former with UniRepLKNet-A, 20 queries and fewer, narrower layers, as config options
SMALL_MASK2FORMER = {
    'model.backbone.arch': 'a',
    'model.backbone.init_cfg': None,
    'model.backbone.with_cp': False,
    'model.decode_head.in_channels': [40, 80, 160, 320],
    'model.decode_head.num_queries': 20,
    'model.decode_head.pixel_decoder.encoder.num_layers': 1,
    'model.decode_head.pixel_decoder.encoder.layer_cfg.ffn_cfg.feedforward_channels': 64,
    'model.decode_head.transformer_decoder.num_layers': 3,
    'model.decode_head.transformer_decoder.layer_cfg.ffn_cfg.feedforward_channels': 64,
}


def as_cfg_options(options: dict) -> list:
    """``--cfg-options`` arguments for a dict of config keys and values."""
    return [f'{k}={str(v).replace(" ", "")}' for k, v in options.items()]


_backend_ids = itertools.count()


def recording_backend(wrap_outputs=None):
    """A new torch.compile backend, registered under a fresh name: torch's aot_eager
    (AOTAutograd and its partitioner, as Inductor has them, which gradient checkpointing's
    recomputation needs) that records the forward graphs it is given (aten-level) and runs them
    as they are, or with their outputs changed by ``wrap_outputs``. It shows what went through
    the compiler, cheaply: Inductor would take minutes on 2 cores. Returns (name, graphs)."""
    from torch._dynamo import register_backend
    from torch._dynamo.backends.debugging import aot_eager, boxed_nop

    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        run = boxed_nop(gm, example_inputs)
        if wrap_outputs is None:
            return run

        def changed(args):
            return wrap_outputs(run(args))

        changed._boxed_call = True  # AOTAutograd's calling convention, as boxed_nop's
        return changed

    def backend(gm, example_inputs, **kwargs):
        return aot_eager(gm, example_inputs, fw_compiler=record, **kwargs)

    name = f'mmunirep_test_backend_{next(_backend_ids)}'
    register_backend(compiler_fn=backend, name=name)
    return name, graphs


def ground_truth_from_predictions(pred_file, ann_file, out_file, masks, per_image):
    """A COCO annotation file with the images and categories of ``ann_file`` and, as their
    objects, the ``per_image`` highest-scoring boxes (and masks) of a DumpDetResults pickle."""
    import json
    import pickle

    from pycocotools import mask as mask_utils

    with open(pred_file, 'rb') as f:
        preds = pickle.load(f)
    with open(ann_file) as f:
        coco = json.load(f)
    cat_ids = sorted(c['id'] for c in coco['categories'])
    annotations = []
    for pred in preds:
        inst = pred['pred_instances']
        top = inst['scores'].argsort(descending=True)[:per_image].tolist()
        assert len(top) == per_image, f'{len(top)} detections in image {pred["img_id"]}'
        for i in top:
            x1, y1, x2, y2 = inst['bboxes'][i].tolist()
            ann = dict(
                id=len(annotations) + 1,
                image_id=pred['img_id'],
                iscrowd=0,
                category_id=cat_ids[int(inst['labels'][i])],
                bbox=[x1, y1, x2 - x1, y2 - y1],
                area=(x2 - x1) * (y2 - y1),
            )
            if masks:
                rle = dict(inst['masks'][i])
                if isinstance(rle['counts'], bytes):
                    rle['counts'] = rle['counts'].decode()
                ann.update(segmentation=rle, area=float(mask_utils.area(inst['masks'][i])))
            annotations.append(ann)
    coco['annotations'] = annotations
    with open(out_file, 'w') as f:
        json.dump(coco, f)


# COCOeval's stats by the names CocoMetric reports them under
COCO_STATS = ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l')


def coco_stats(pred_file, ann_file, iou_type):
    """pycocotools' COCOeval of the boxes or masks of a DumpDetResults pickle (tools/test.py
    --out), with CocoMetric's maxDets: {name: value} for the names of :data:`COCO_STATS`."""
    import contextlib
    import io
    import pickle

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with open(pred_file, 'rb') as f:
        preds = pickle.load(f)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(ann_file)
    assert sorted(p['img_id'] for p in preds) == sorted(gt.getImgIds())
    cat_ids = sorted(gt.getCatIds())
    dets = []
    for pred in preds:
        inst = pred['pred_instances']
        for i in range(len(inst['scores'])):
            det = dict(
                image_id=pred['img_id'],
                category_id=cat_ids[int(inst['labels'][i])],
                score=float(inst['scores'][i]),
            )
            if iou_type == 'bbox':
                x1, y1, x2, y2 = inst['bboxes'][i].tolist()
                det['bbox'] = [x1, y1, x2 - x1, y2 - y1]
            else:
                det['segmentation'] = dict(inst['masks'][i])
            dets.append(det)
    assert dets, 'no detections: nothing to evaluate'
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(dets), iou_type)
        evaluator.params.maxDets = [100, 300, 1000]  # CocoMetric's
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return dict(zip(COCO_STATS, evaluator.stats[: len(COCO_STATS)].tolist()))
