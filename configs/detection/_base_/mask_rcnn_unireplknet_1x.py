# Mask R-CNN 1x with a UniRepLKNet backbone: the 3x recipe of ./mask_rcnn_unireplknet_3x.py with
# MMDetection's 1x protocol (as its Swin Mask R-CNN 1x config): single-scale training at
# (1333, 800) with flips, 12 epochs with steps at 8 and 11. Not in the UniRepLKNet paper.
_base_ = ['./mask_rcnn_unireplknet_3x.py']

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
