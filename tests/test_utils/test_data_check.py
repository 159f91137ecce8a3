"""Annotations are checked before training or testing starts, with the file, the item and what is
wrong."""

import json
import os.path as osp

import cv2
import numpy as np
import pytest
from mmengine.config import Config

from mmunirep.utils.data_check import DataError, check_coco_file, check_datasets

from helpers import tiny_det_config, tiny_seg_config


@pytest.fixture
def coco(shapes_coco, tmp_path):
    """A copy of the generated COCO validation file to break."""
    with open(osp.join(shapes_coco, 'annotations', 'instances_val.json')) as f:
        data = json.load(f)
    assert data['annotations']

    def write(mutate):
        mutate(data)
        path = tmp_path / 'broken.json'
        path.write_text(json.dumps(data))
        return str(path)

    return data, write


def test_the_generated_data_passes(shapes_coco, shapes_ade, tmp_path):
    check_datasets(
        Config.fromfile(tiny_det_config(tmp_path, shapes_coco)), ('train', 'val'), 'full'
    )
    check_datasets(Config.fromfile(tiny_seg_config(tmp_path, shapes_ade)), ('train', 'val'), 'full')


@pytest.mark.parametrize(
    'mutate, message',
    [
        (
            lambda d: d['annotations'][0].update(segmentation=[[1.0, 2.0, 5.0, 6.0]]),
            r'polygon 0 has 4 coordinates; expected at least 3 points',
        ),
        (lambda d: d['annotations'][0].update(bbox=[1, 2, -3, 4]), r'has bbox \[1, 2, -3, 4\]'),
        (lambda d: d['annotations'][0].update(category_id=99), 'has category_id 99'),
        (lambda d: d['annotations'][0].update(image_id=12345), 'refers to image id 12345'),
        (lambda d: d['images'].append(dict(d['images'][0])), 'appears twice'),
        (
            lambda d: d['annotations'][0].update(segmentation=dict(counts='x', size=[1, 2])),
            r'its RLE is of size \[1, 2\]',
        ),
    ],
)
def test_a_broken_coco_annotation_is_named(coco, mutate, message):
    data, write = coco
    first = data['annotations'][0]['id']
    path = write(mutate)
    with pytest.raises(DataError, match=message) as info:
        check_coco_file(path)
    assert path in str(info.value)
    if 'appears twice' not in message and 'refers to image' not in message:
        assert f'annotation {first} (image ' in str(info.value)


def test_coco_classes_and_images_are_checked(coco, shapes_coco):
    data, write = coco
    path = write(lambda d: None)
    with pytest.raises(DataError, match=r"the config's classes \['hexagon'\] are not among"):
        check_coco_file(path, classes=('circle', 'hexagon'))
    with pytest.raises(DataError, match='of the images checked are not in'):
        check_coco_file(path, img_prefix=osp.join(shapes_coco, 'no_such_folder'))
    check_coco_file(path, classes=('circle', 'square'), img_prefix=osp.join(shapes_coco, 'val'))
    with pytest.raises(DataError, match='is not a JSON file'):
        check_coco_file(_write_text(path, '{"images": ['))


def _write_text(path, text):
    with open(path, 'w') as f:
        f.write(text)
    return path


def test_a_label_map_beyond_the_classes_is_named(shapes_ade, tmp_path):
    import shutil

    root = tmp_path / 'ade'
    shutil.copytree(shapes_ade, root)
    maps = sorted((root / 'annotations' / 'training').iterdir())
    label = cv2.imread(str(maps[-1]), cv2.IMREAD_UNCHANGED)
    label[0, :5] = 7  # the quick start's 4 classes (0 is the background): 0..3 and 255 allowed
    cv2.imwrite(str(maps[-1]), label)
    cfg = Config.fromfile(tiny_seg_config(tmp_path, str(root)))
    with pytest.raises(DataError, match=r'label values \[7\] are beyond the 4 classes') as info:
        check_datasets(cfg, ('train',), 'full')
    assert str(maps[-1]) in str(info.value)
    check_datasets(cfg, ('train',), 'off')
    label = np.dstack([label] * 3)
    cv2.imwrite(str(maps[-1]), label)
    with pytest.raises(DataError, match='has shape'):
        check_datasets(cfg, ('train',), 'full')


def _shapes_dataset(root, classes=None, dataset_cls=None):
    """The shapes' training label maps as an MMSegmentation dataset, ``classes`` its metainfo's."""
    from mmseg.datasets import BaseSegDataset

    return (dataset_cls or BaseSegDataset)(
        data_root=str(root),
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        img_suffix='.jpg',
        seg_map_suffix='.png',
        metainfo=dict(classes=classes) if classes else None,
        lazy_init=True,
    )


def test_label_maps_are_read_as_mmsegmentation_reads_them(shapes_ade, tmp_path):
    """A palette PNG holds its class indices (OpenCV would expand it to 3 colour channels), and a
    dataset whose classes are a subset of its type's maps the others to the ignore index (its
    label_map): both pass; a value beyond the classes in a palette PNG is still named."""
    import shutil

    from mmseg.datasets import BaseSegDataset
    from PIL import Image

    from mmunirep.utils.data_check import check_label_maps

    root = tmp_path / 'ade'
    shutil.copytree(shapes_ade, root)
    # the map with a triangle (3): beyond a 2-class dataset without its label_map
    path = next(
        p
        for p in sorted((root / 'annotations' / 'training').iterdir())
        if 3 in cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    )
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    palette = Image.fromarray(label.astype(np.uint8), mode='P')
    palette.putpalette([v for i in range(256) for v in (i, 255 - i, 3 * i % 256)])
    palette.save(str(path))
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).ndim == 3  # what OpenCV makes of it
    classes = ('background', 'circle', 'square', 'triangle')
    check_label_maps(_shapes_dataset(root, classes), 'full')

    class Shapes(BaseSegDataset):
        METAINFO = dict(classes=classes)

    subset = _shapes_dataset(root, ('background', 'square'), Shapes)
    subset.full_init()
    assert subset.label_map == {0: 0, 1: 255, 2: 1, 3: 255}
    check_label_maps(subset, 'full')  # values 1 and 3 are ignored, 2 is class 1

    label[0, :3] = 9
    bad = Image.fromarray(label.astype(np.uint8), mode='P')
    bad.putpalette(palette.getpalette())
    bad.save(str(path))
    with pytest.raises(
        DataError,
        match=r"label values \[9\] are beyond the 2 classes of the dataset and the dataset's "
        'label_map',
    ):
        check_label_maps(_shapes_dataset(root, ('background', 'square'), Shapes), 'full')


def test_a_coco_file_without_annotations_is_an_image_list(coco, shapes_coco):
    """COCO's test-dev files list images and categories only: accepted, their images checked."""
    data, write = coco
    path = write(lambda d: d.pop('annotations'))
    check_coco_file(path, classes=('circle',), img_prefix=osp.join(shapes_coco, 'val'))
    with pytest.raises(DataError, match='of the images checked are not in'):
        check_coco_file(path, img_prefix=osp.join(shapes_coco, 'no_such_folder'))
    path = write(lambda d: d.pop('images'))
    with pytest.raises(DataError, match='expected a COCO-format file with a list of "images"'):
        check_coco_file(path)
