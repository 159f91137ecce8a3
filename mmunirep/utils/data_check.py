"""Checking a config's annotations before training or testing starts.

A broken annotation otherwise fails late: a COCO polygon of fewer than 3 points trains a whole
epoch and then crashes pycocotools' evaluation; a label map with values above the class count
fails training at its first iteration with a bare indexing error, and is silently scored by a
test. Neither MMDetection nor MMSegmentation checks their files up front, so this does, with the
frameworks' own datasets telling where the files are (their data roots, prefixes, suffixes,
classes and label handling): COCO-format files are read whole (seconds for COCO's), label maps
are read as a sample (``'sample'``) or all (``'full'``).
"""

import json
from typing import Iterable, List, Optional

import numpy as np
from mmengine import fileio
from mmengine.config import Config
from mmengine.logging import print_log

CHECK_MODES = ('sample', 'full', 'off')
SAMPLE_SIZE = 50  # label maps read in 'sample' mode, spread over the dataset


class DataError(ValueError):
    """An annotation that training or testing would fail on, with its file and item."""


def check_datasets(cfg: Config, splits: Iterable[str], mode: str = 'sample') -> None:
    """Check the annotations of ``cfg``'s ``{split}_dataloader`` datasets and, for COCO
    metrics, of ``{split}_evaluator``'s ``ann_file``; ``mode``: one of :data:`CHECK_MODES`."""
    if mode not in CHECK_MODES:
        raise ValueError(f'expected a data check mode in {CHECK_MODES}, got {mode!r}')
    if mode == 'off':
        return
    from mmengine.registry import DATASETS, init_default_scope

    from .config_utils import framework_of

    init_default_scope(framework_of(cfg))
    checked = set()
    for split in splits:
        loader = cfg.get(f'{split}_dataloader')
        if not loader or not loader.get('dataset'):
            continue
        dataset_cfg = loader['dataset'].copy()
        for dataset in _leaves(DATASETS.build(_lazy(dataset_cfg))):
            key = (
                type(dataset).__name__,
                getattr(dataset, 'ann_file', ''),
                str(getattr(dataset, 'data_prefix', '')),
            )
            if key in checked:
                continue
            checked.add(key)
            _check_dataset(dataset, split, mode)
        for evaluator in _as_list(cfg.get(f'{split}_evaluator')):
            ann_file = evaluator.get('ann_file') if hasattr(evaluator, 'get') else None
            if ann_file and ann_file not in checked and str(ann_file).endswith('.json'):
                checked.add(ann_file)
                check_coco_file(ann_file, mode=mode)


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _lazy(dataset_cfg):
    """The dataset config with ``lazy_init=True`` everywhere, so that building it reads nothing."""
    dataset_cfg = dict(dataset_cfg)
    for key in ('dataset', 'datasets'):
        if key in dataset_cfg:
            inner = dataset_cfg[key]
            dataset_cfg[key] = (
                [_lazy(d) for d in inner] if isinstance(inner, list) else _lazy(inner)
            )
    dataset_cfg['lazy_init'] = True
    return dataset_cfg


def _leaves(dataset) -> List:
    """The datasets inside mmengine's wrappers (Concat, Repeat, ClassBalanced)."""
    if hasattr(dataset, 'datasets'):
        return [leaf for d in dataset.datasets for leaf in _leaves(d)]
    if hasattr(dataset, 'dataset'):
        return _leaves(dataset.dataset)
    return [dataset]


def _check_dataset(dataset, split: str, mode: str) -> None:
    if hasattr(dataset, 'reduce_zero_label'):  # MMSegmentation's BaseSegDataset family
        check_label_maps(dataset, mode)
    elif str(getattr(dataset, 'ann_file', '')).endswith('.json'):
        check_coco_file(
            dataset.ann_file,
            classes=dataset.metainfo.get('classes'),
            img_prefix=dataset.data_prefix.get('img', ''),
            mode=mode,
            backend_args=getattr(dataset, 'backend_args', None),
        )
    else:
        print_log(
            f'{split} data ({type(dataset).__name__}) not checked: mmunirep checks COCO-'
            'format files and label-map datasets',
            logger='current',
        )


def _sample(items: list, mode: str) -> list:
    if mode == 'full' or len(items) <= SAMPLE_SIZE:
        return items
    step = len(items) / SAMPLE_SIZE
    return [items[int(i * step)] for i in range(SAMPLE_SIZE)]


def check_coco_file(
    ann_file: str,
    classes=None,
    img_prefix: str = '',
    mode: str = 'sample',
    backend_args: Optional[dict] = None,
) -> None:
    """A COCO-format instance file as MMDetection and pycocotools will use it: its structure,
    ids, boxes and masks (polygons of at least 3 points, RLEs of the image's size), the config's
    classes among its categories, and (a sample of, or all) the images in storage. A file
    without annotations (COCO's test-dev image lists) has its images checked only."""
    if not fileio.exists(ann_file, backend_args=backend_args):
        raise DataError(f'annotation file not found: {ann_file}')
    try:
        coco = json.loads(fileio.get_text(ann_file, backend_args=backend_args))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f'{ann_file} is not a JSON file: {e}') from e
    if isinstance(coco, dict):
        coco.setdefault('annotations', [])
    for key in ('images', 'annotations', 'categories'):
        if not isinstance(coco.get(key) if isinstance(coco, dict) else None, list):
            raise DataError(f'{ann_file}: expected a COCO-format file with a list of "{key}"')
    images = {}
    for img in coco['images']:
        if img.get('id') in images:
            raise DataError(f'{ann_file}: image id {img.get("id")} appears twice')
        images[img.get('id')] = img
    categories = {c.get('id'): c.get('name') for c in coco['categories']}
    if classes is not None:
        unknown = [c for c in classes if c not in categories.values()]
        if unknown:
            raise DataError(
                f"{ann_file}: the config's classes {list(unknown)[:5]} are not among "
                f'its categories {sorted(map(str, categories.values()))[:10]}: set '
                "the dataset's metainfo classes to category names of the file"
            )
    for i, ann in enumerate(coco['annotations']):
        where = f'{ann_file}: annotation {ann.get("id", f"#{i}")}'
        img = images.get(ann.get('image_id'))
        if img is None:
            raise DataError(
                f'{where} refers to image id {ann.get("image_id")}, which the file does not list'
            )
        where += f' (image {img.get("file_name")})'
        if ann.get('category_id') not in categories:
            raise DataError(
                f'{where} has category_id {ann.get("category_id")}, not among the '
                f'categories {sorted(categories)[:10]}'
            )
        bbox = ann.get('bbox')
        if not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(isinstance(v, (int, float)) and np.isfinite(v) for v in bbox)
            and bbox[2] >= 0
            and bbox[3] >= 0
        ):
            raise DataError(
                f'{where} has bbox {bbox}: expected [x, y, width, height], finite, '
                'width and height not negative'
            )
        _check_segmentation(ann.get('segmentation'), img, where)
    files = [img.get('file_name', '') for img in coco['images']]
    missing = [
        f
        for f in _sample(files, mode)
        if not fileio.exists(fileio.join_path(img_prefix, f), backend_args=backend_args)
    ]
    if img_prefix and missing:
        raise DataError(
            f'{ann_file}: {len(missing)} of the images checked are not in '
            f'{img_prefix}, e.g. {missing[:3]}'
        )


def _check_segmentation(seg, img: dict, where: str) -> None:
    if seg is None or seg == []:
        return
    if isinstance(seg, list):  # polygons
        for j, poly in enumerate(seg):
            if (
                not isinstance(poly, list)
                or len(poly) % 2
                or len(poly) < 6
                or not all(isinstance(v, (int, float)) for v in poly)
            ):
                n = len(poly) if isinstance(poly, list) else poly
                raise DataError(
                    f'{where}: polygon {j} has {n} coordinates; expected at least 3 '
                    'points (6 numbers, x y pairs), which pycocotools needs to '
                    'evaluate masks'
                )
    elif isinstance(seg, dict):  # RLE
        size = seg.get('size')
        if 'counts' not in seg or not isinstance(size, list) or len(size) != 2:
            raise DataError(
                f'{where}: expected an RLE with "counts" and "size", got keys {sorted(seg)}'
            )
        if 'height' in img and 'width' in img and list(size) != [img['height'], img['width']]:
            raise DataError(
                f'{where}: its RLE is of size {size}, the image {[img["height"], img["width"]]}'
            )
    else:
        raise DataError(
            f'{where}: segmentation must be a list of polygons or an RLE dict, got '
            f'{type(seg).__name__}'
        )


def check_label_maps(dataset, mode: str = 'sample') -> None:
    """A sample of (or all) a segmentation dataset's label maps, read as MMSegmentation's
    ``LoadAnnotations`` reads them (Pillow: a palette PNG gives its indices): one channel of
    values that are class indices (0 .. classes - 1) or the dataset's ignore index, after its
    ``reduce_zero_label`` (0 ignored, the others shifted down by one) and its ``label_map`` (the
    dataset's classes a subset of its type's)."""
    import mmcv

    dataset.full_init()
    classes = dataset.metainfo.get('classes') or ()
    ignore = dataset.ignore_index
    reduce_zero = bool(dataset.reduce_zero_label)
    label_map = getattr(dataset, 'label_map', None) or {}
    allowed_max = len(classes) if reduce_zero else len(classes) - 1

    def training_value(value: int) -> int:  # LoadAnnotations' arithmetic on one value
        if reduce_zero:
            value = 255 if value in (0, 255) else value - 1
        return label_map.get(value, value)

    infos = (dataset.get_data_info(i) for i in range(len(dataset)))
    maps = [info['seg_map_path'] for info in infos if info.get('seg_map_path')]
    if not maps:
        raise DataError(
            f'no label maps found for {type(dataset).__name__} in '
            f'{dataset.data_prefix.get("seg_map_path")} (suffix '
            f'{dataset.seg_map_suffix})'
        )
    for path in _sample(maps, mode):
        try:
            label = mmcv.imfrombytes(
                fileio.get(path, backend_args=dataset.backend_args),
                flag='unchanged',
                backend='pillow',
            )
        except (OSError, ValueError) as e:  # Pillow's UnidentifiedImageError is an OSError
            raise DataError(f'{path}: not a readable image (a label map was expected): {e}') from e
        if label.ndim == 3 and label.shape[2] == 1:
            label = label[..., 0]
        if label.ndim != 2:
            raise DataError(
                f'{path}: a label map has one channel of class indices; this one has '
                f'shape {label.shape}'
            )
        bad = [
            int(v)
            for v in np.unique(label)
            if training_value(int(v)) >= len(classes) and training_value(int(v)) != ignore
        ]
        if bad:
            shift = (
                ' with reduce_zero_label (0 is ignored, 1..N are the N classes)'
                if reduce_zero
                else ''
            )
            if label_map:
                shift += " and the dataset's label_map"
            raise DataError(
                f'{path}: label values {bad[:8]} are beyond the {len(classes)} '
                f'classes of the dataset{shift}; allowed: 0..{allowed_max} and the '
                f"ignore index {ignore}. Check the dataset's classes (num_classes) "
                'or the label maps'
            )
    print_log(
        f'checked {min(len(maps), len(_sample(maps, mode)))} of {len(maps)} label maps of '
        f'{type(dataset).__name__} ({mode})',
        logger='current',
    )
