# Train on your own dataset (docs/en/user_guides/custom_dataset.md): the UperNet 160k recipe with
# UniRepLKNet-T (IN-1K) on a semantic segmentation dataset in ADE20K's layout
# (images/{training,validation}/*.jpg, annotations/{training,validation}/*.png, 8-bit label maps)
# with your classes. Change `data_root`, `classes`, `palette` and, if 0 in your label maps means
# "unlabelled" (as in ADE20K) rather than a class, set reduce_zero_label=True and leave that class
# out of `classes`; the heads' num_classes follow from `classes`.
#
# As written it trains on the segmentation quick start's generated shapes, whose label 0 is the
# background class:
#   python tools/misc/make_shapes_ade20k.py --out data/shapes_ade
#   python tools/train.py configs/segmentation/example_custom_dataset_upernet.py
_base_ = ['./unireplknet_t_1k_upernet_160k_512.py']

data_root = 'data/shapes_ade'
classes = ('background', 'circle', 'square', 'triangle')  # label values 0, 1, 2, 3
palette = [[0, 0, 0], [220, 20, 60], [0, 170, 0], [30, 60, 255]]  # RGB, one per class
num_classes = len(classes)
reduce_zero_label = False  # True when 0 means "unlabelled" (ignored), as in ADE20K

model = dict(
    decode_head=dict(num_classes=num_classes), auxiliary_head=dict(num_classes=num_classes)
)

# BaseSegDataset: any class names (ADE20KDataset accepts only ADE20K's)
dataset = dict(
    type='BaseSegDataset',
    data_root=data_root,
    metainfo=dict(classes=classes, palette=palette),
    img_suffix='.jpg',
    seg_map_suffix='.png',
    reduce_zero_label=reduce_zero_label,
)
train_dataloader = dict(
    dataset=dict(
        dataset,
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', reduce_zero_label=reduce_zero_label),
            dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
            dict(type='RandomCrop', crop_size=(512, 512), cat_max_ratio=0.75),
            dict(type='RandomFlip', prob=0.5),
            dict(type='PhotoMetricDistortion'),
            dict(type='PackSegInputs'),
        ],
    )
)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    dict(type='LoadAnnotations', reduce_zero_label=reduce_zero_label),
    dict(type='PackSegInputs'),
]
val_dataloader = dict(
    dataset=dict(
        dataset,
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        pipeline=test_pipeline,
    )
)
test_dataloader = val_dataloader
