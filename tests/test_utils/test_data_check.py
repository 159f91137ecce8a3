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
