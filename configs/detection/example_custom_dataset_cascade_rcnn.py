# Train on your own dataset (docs/en/user_guides/custom_dataset.md), boxes only: Cascade R-CNN
# 3x with UniRepLKNet-T (IN-1K) on a COCO-format detection dataset of your classes (annotations
# with `bbox` and no `segmentation`). The dataset settings are those of
# ./example_custom_dataset_cascade_mask_rcnn.py; here the mask branch, the mask annotations and
# the mask metric are taken out.
#
#   python tools/train.py configs/detection/example_custom_dataset_cascade_rcnn.py
_base_ = ['./example_custom_dataset_cascade_mask_rcnn.py']

model = dict(roi_head=dict(mask_roi_extractor=None, mask_head=None))

# the recipe's DETR-style multi-scale + crop augmentation, loading boxes only
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [
                dict(
                    type='RandomChoiceResize',
                    scales=[(s, 1333) for s in range(480, 801, 32)],
                    keep_ratio=True,
                )
            ],
            [
                dict(
                    type='RandomChoiceResize',
                    scales=[(400, 1333), (500, 1333), (600, 1333)],
                    keep_ratio=True,
                ),
                dict(
                    type='RandomCrop',
                    crop_type='absolute_range',
                    crop_size=(384, 600),
                    allow_negative_crop=True,
                ),
                dict(
                    type='RandomChoiceResize',
                    scales=[(s, 1333) for s in range(480, 801, 32)],
                    keep_ratio=True,
                ),
            ],
        ],
    ),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'),
    ),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(metric='bbox')
test_evaluator = val_evaluator
