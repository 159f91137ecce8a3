# Quick start: UperNet with a UniRepLKNet-A backbone on a small synthetic ADE20K-format dataset
# (tools/misc/make_shapes_ade20k.py: circles, squares and triangles), trained from scratch on a CPU in
# a few minutes. `bash scripts/quickstart_seg.sh` generates the data, trains, evaluates (mIoU) and
# draws predictions.
#
# It differs from the ADE20K configs only where a CPU and a toy dataset need it: no pretrained
# weights (this must run where nothing can be downloaded, so the backbone starts from random
# initialization), plain BN instead of SyncBN (one process), no gradient checkpointing, 128x128
# crops, UperNet/FCN heads with 64/32 channels instead of 512/256, 4 classes, losses averaged
# over the labelled pixels only, a higher lr, and 400 iterations.
# Label 0 of the generated maps is the background, a class here (reduce_zero_label=False), not
# ignored as ADE20K's 0 ("other") is: the model learns it, the mIoU counts it, and the drawn
# predictions paint it as the drawn ground truth does. The background is 79% of the pixels and
# triangles 4%: in 200 iterations (enough while the background was ignored) the model did not
# predict a single triangle pixel, in 400 it does (docs/en/model_zoo.md#quick-starts).
_base_ = ['mmseg::_base_/default_runtime.py']

custom_imports = dict(imports=['mmunirep'], allow_failed_imports=False)

data_root = 'data/shapes_ade'
classes = ('background', 'circle', 'square', 'triangle')  # label values 0..3 in the PNGs
palette = [[0, 0, 0], [220, 20, 60], [0, 170, 0], [30, 60, 255]]
crop_size = (128, 128)
test_scale = (512, 128)  # (2048, 512) of ADE20K scaled to the 128-pixel images
norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(
        type='SegDataPreProcessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        size=crop_size,
    ),
    backbone=dict(
        type='mmunirep.UniRepLKNet',
        arch='a',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.0,
        norm_cfg=dict(type='BN'),
        with_cp=False,
        use_lk_op=False,
        init_cfg=None,
    ),  # no pretrained weights: nothing can be downloaded here
    decode_head=dict(
        type='UPerHead',
        in_channels=[40, 80, 160, 320],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=64,
        dropout_ratio=0.1,
        num_classes=len(classes),
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0, avg_non_ignore=True
        ),
    ),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=160,
        in_index=2,
        channels=32,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=len(classes),
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4, avg_non_ignore=True
        ),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'),
)

# BaseSegDataset with ADE20K's file layout and conventions (ADE20KDataset would only accept a
# subset of ADE20K's 150 class names)
dataset_type = 'BaseSegDataset'
dataset_common = dict(
    type=dataset_type,
    data_root=data_root,
    img_suffix='.jpg',
    seg_map_suffix='.png',
    reduce_zero_label=False,
    metainfo=dict(classes=classes, palette=palette),
)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='RandomResize', scale=test_scale, ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=test_scale, keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='PackSegInputs'),
]
img_ratios = [0.75, 1.0, 1.25]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [
                dict(
                    type='Resize',
                    scale=(int(test_scale[0] * r), int(test_scale[1] * r)),
                    keep_ratio=True,
                )
                for r in img_ratios
            ],
            [dict(type='ResizeToMultiple', size_divisor=32)],
            [
                dict(type='RandomFlip', prob=0.0, direction='horizontal'),
                dict(type='RandomFlip', prob=1.0, direction='horizontal'),
            ],
            [dict(type='LoadAnnotations')],
            [dict(type='PackSegInputs')],
        ],
    ),
]

train_dataloader = dict(
    batch_size=4,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        **dataset_common,
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        **dataset_common,
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

# AdamW through the layer-decay constructor of the ADE20K configs, with no decay (from scratch)
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='UniRepLKNetLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(num_layers=6, decay_rate=1.0),
    optimizer=dict(type='AdamW', lr=2e-3, betas=(0.9, 0.999), weight_decay=0.05),
)
max_iters = 400
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=30),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=30, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'),
)
auto_scale_lr = dict(enable=False, base_batch_size=4)  # the lr is for batch 4 on one process
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)
# a run resumed after an interruption continues as the uninterrupted one would (mmunirep hook)
custom_hooks = [dict(type='ReproducibleResumeHook')]
