"""What an exported model needs to be run without its config: the test pipeline's resize, the
data pre-processor's normalization and padding, the classes and the post-processing thresholds,
stored as JSON in the ONNX file's ``metadata_props`` under :data:`KEY`; for a segmentor also its
dataset's label-map conventions, which ``tools/deployment/evaluate_onnx.py`` scores it with.

``tools/deployment/onnx_inference.py`` reads it with onnxruntime alone.
"""

import importlib
import inspect
import json
from typing import Optional

from mmengine.config import Config

KEY = 'mmunirep'
FORMAT = 1
# the test pipeline's transforms the exported model's caller must repeat, and those it may drop
RESIZES = ('Resize', 'ResizeToMultiple')
IGNORED = ('LoadImageFromFile', 'LoadAnnotations', 'PackDetInputs', 'PackSegInputs')


def preprocess_spec(cfg: Config) -> dict:
    """The test pipeline's resizing and the data pre-processor's normalization and padding."""
    dataset = cfg.test_dataloader.dataset
    if 'pipeline' not in dataset:
        raise ValueError(
            f'the test dataset ({dataset.get("type")}) has no pipeline of its own; the exported '
            "model's preprocessing is read from test_dataloader.dataset.pipeline"
        )
    spec = dict(resize=None, resize_to_multiple=None)
    for transform in dataset.pipeline:
        kind = transform['type'].split('.')[-1]
        if kind == 'Resize':
            if 'scale' not in transform or transform.get('scale_factor') is not None:
                raise ValueError(f"the test pipeline's Resize must give a scale: {transform}")
            scale = transform['scale']
            spec['resize'] = dict(
                scale=[scale, scale] if isinstance(scale, int) else list(scale),
                keep_ratio=bool(transform.get('keep_ratio', False)),
            )
        elif kind == 'ResizeToMultiple':
            spec['resize_to_multiple'] = int(transform.get('size_divisor', 32))
        elif kind not in IGNORED:
            raise ValueError(
                f"the test pipeline has a {kind}, which the exported model's "
                f'preprocessing does not repeat; supported: {RESIZES}'
            )
    pre = cfg.model.data_preprocessor
    # MMSegmentation's pre-processor pads test images only as its test_cfg says
    test_padding = pre.get('test_cfg') or {}
    if test_padding.get('size'):
        raise ValueError(
            f'the data pre-processor pads test images to test_cfg.size={test_padding["size"]}, '
            "which the exported model's preprocessing does not repeat; supported: "
            'test_cfg.size_divisor'
        )
    spec.update(
        mean=[float(v) for v in pre.get('mean', [0.0, 0.0, 0.0])],
        std=[float(v) for v in pre.get('std', [1.0, 1.0, 1.0])],
        bgr_to_rgb=bool(pre.get('bgr_to_rgb', False) or pre.get('rgb_to_bgr', False)),
        pad_size_divisor=int(pre.get('pad_size_divisor') or test_padding.get('size_divisor') or 1),
        pad_value=float(pre.get('pad_value', pre.get('pad_val', 0))),
    )
    return spec


def dataset_meta(cfg: Config, checkpoint_meta: Optional[dict] = None) -> dict:
    """``classes`` and ``palette``: the checkpoint's, else the config's dataset's."""
    meta = dict((checkpoint_meta or {}).get('dataset_meta') or {})
    if not meta.get('classes'):
        dataset = cfg.test_dataloader.dataset
        meta = dict(getattr(_registered(cfg, 'DATASETS', dataset.type), 'METAINFO', {}))
        meta.update(dataset.get('metainfo') or {})
    return dict(
        classes=[str(c) for c in meta.get('classes', ())],
        palette=[[int(v) for v in c] for c in meta.get('palette', ())] or None,
    )


def segmentation_annotations(cfg: Config) -> dict:
    """How the segmentor's test dataset lays out and reads its label maps: the image and label-map
    suffixes, ``reduce_zero_label`` and the metric's ``ignore_index``. Each is the config's value,
    else the default of the dataset's (metric's) class, as MMSegmentation would build them."""
    dataset = cfg.test_dataloader.dataset
    dataset_cls = _registered(cfg, 'DATASETS', dataset.type)
    spec = {
        name: dataset[name] if name in dataset else _init_default(dataset_cls, name)
        for name in ('img_suffix', 'seg_map_suffix', 'reduce_zero_label')
    }
    # LoadAnnotations' own setting wins (MMSegmentation asserts that the two agree)
    for transform in dataset.get('pipeline', []):
        if transform['type'].split('.')[-1] == 'LoadAnnotations':
            if transform.get('reduce_zero_label') is not None:
                spec['reduce_zero_label'] = transform['reduce_zero_label']
    evaluator = cfg.get('test_evaluator') or {}
    if isinstance(evaluator, (list, tuple)):  # several metrics: the IoUMetric among them
        evaluator = next((e for e in evaluator if 'IoUMetric' in e.get('type', '')), {})
    if 'ignore_index' in evaluator:
        spec['ignore_index'] = evaluator['ignore_index']
    else:
        metric_cls = _registered(cfg, 'METRICS', evaluator.get('type', 'IoUMetric'))
        spec['ignore_index'] = _init_default(metric_cls, 'ignore_index')
    spec['reduce_zero_label'] = bool(spec['reduce_zero_label'])
    return spec


def _registered(cfg: Config, registry: str, type_name: str):
    """The class ``type_name`` names in the config's framework's ``registry``, which imports its
    modules on first use."""
    from mmunirep.utils import framework_of

    framework = framework_of(cfg)
    found = getattr(importlib.import_module(f'{framework}.registry'), registry).get(type_name)
    if found is None:
        raise ValueError(f'the type {type_name!r} is not registered in {framework}.{registry}')
    return found


def _init_default(cls, name: str):
    """The default of argument ``name`` in the first ``__init__`` of ``cls``' classes that has one
    (a dataset passes the rest to its base class as ``**kwargs``)."""
    for klass in cls.__mro__:
        param = inspect.signature(klass.__init__).parameters.get(name)
        if param is not None and param.default is not inspect.Parameter.empty:
            return param.default
    raise ValueError(f'{cls.__name__} has no default for {name!r}; set it in the config')


def build_metadata(
    cfg: Config, task: str, inputs, outputs, checkpoint_meta=None, **postprocess
) -> dict:
    """The metadata of an exported model of ``task`` ('detection', 'segmentation', 'backbone')."""
    return dict(
        format=FORMAT,
        task=task,
        config=cfg.filename,
        inputs=list(inputs),
        outputs=list(outputs),
        preprocess=preprocess_spec(cfg),
        postprocess=postprocess,
        **dataset_meta(cfg, checkpoint_meta),
    )


def write_metadata(model_proto, metadata: dict) -> None:
    """Store ``metadata`` in an ``onnx.ModelProto`` (replacing an earlier one)."""
    for prop in list(model_proto.metadata_props):
        if prop.key == KEY:
            model_proto.metadata_props.remove(prop)
    prop = model_proto.metadata_props.add()
    prop.key, prop.value = KEY, json.dumps(metadata)
