# QUICK START: Cascade Mask R-CNN + UniRepLKNet-A on a generated shapes dataset, trained from
# scratch on a CPU in minutes (scripts/quickstart_det.sh). It inherits the full recipe and only
# shrinks it: arch 'a' from random initialization, BN instead of SyncBN, no gradient
# checkpointing, 160 px images, narrower neck and heads with fewer proposals, a short schedule.
#
#   python tools/misc/make_shapes_coco.py --out data/shapes_coco
#   python tools/train.py configs/detection/quickstart_unireplknet_a_shapes.py
#
# Unlike the paper's network it has BatchNorm in the stem, the down-sampling layers and the output
# norms (downsample_norm_cfg), which learns these flat-coloured images from scratch a little
# better than the paper's LayerNorm there (docs/en/model_zoo.md#quick-starts).
_base_ = ['./_base_/cascade_mask_rcnn_unireplknet_3x.py']

classes = ('circle', 'square', 'triangle')
num_classes = len(classes)
data_root = 'data/shapes_coco/'
img_scale = (160, 160)
channels = 64  # neck / RoI feature channels (256 in the recipe)

model = dict(
    data_preprocessor=dict(pad_size_divisor=32),
    backbone=dict(
        arch='a',
        downsample_norm_cfg=dict(type='BN'),  # see the header
        drop_path_rate=0.0,
        norm_cfg=dict(type='BN'),
        with_cp=False,
        init_cfg=None,
    ),  # random initialization: trained from scratch
    neck=dict(in_channels=[40, 80, 160, 320], out_channels=channels),
    rpn_head=dict(in_channels=channels, feat_channels=channels),
    roi_head=dict(
        bbox_roi_extractor=dict(
            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=1), out_channels=channels
        ),
        bbox_head=[
            dict(
                type='ConvFCBBoxHead',
                num_shared_convs=1,
                num_shared_fcs=1,
                in_channels=channels,
                conv_out_channels=channels,
                fc_out_channels=256,
                roi_feat_size=7,
                num_classes=num_classes,
                bbox_coder=dict(
                    type='DeltaXYWHBBoxCoder', target_means=[0.0, 0.0, 0.0, 0.0], target_stds=stds
                ),
                reg_class_agnostic=False,
                reg_decoded_bbox=True,
                norm_cfg=dict(type='BN', requires_grad=True),
                loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
                loss_bbox=dict(type='GIoULoss', loss_weight=10.0),
            )
            for stds in ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])
        ],
        mask_roi_extractor=dict(
            roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=1), out_channels=channels
        ),
        mask_head=dict(
            num_convs=2, in_channels=channels, conv_out_channels=channels, num_classes=num_classes
        ),
    ),
    train_cfg=dict(
        rpn=dict(sampler=dict(num=128)),
        rpn_proposal=dict(nms_pre=400, max_per_img=128),
        rcnn=[
            dict(
                assigner=dict(
                    type='MaxIoUAssigner',
                    pos_iou_thr=iou,
                    neg_iou_thr=iou,
                    min_pos_iou=iou,
                    match_low_quality=False,
                    ignore_iof_thr=-1,
                ),
                sampler=dict(
                    type='RandomSampler',
                    num=32,
                    pos_fraction=0.25,
                    neg_pos_ub=-1,
                    add_gt_as_proposals=True,
                ),
                mask_size=28,
                pos_weight=-1,
                debug=False,
            )
            for iou in (0.5, 0.6, 0.7)
        ],
    ),
    test_cfg=dict(rpn=dict(nms_pre=400, max_per_img=100), rcnn=dict(max_per_img=20)),
)

# data: tools/misc/make_shapes_coco.py writes data/shapes_coco/{train,val}/ and annotations/
backend_args = None
metainfo = dict(classes=classes)
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5, direction=['horizontal', 'vertical']),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'),
    ),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=8),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

# schedule: short, from scratch, so a higher lr than the recipe's fine-tuning 1e-4 and no
# layer-wise decay (nothing pretrained to preserve); evaluation once at the end.
max_epochs = 8
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
optim_wrapper = dict(
    paramwise_cfg=dict(decay_rate=1.0),
    optimizer=dict(lr=1e-3, weight_decay=0.05),
    clip_grad=dict(max_norm=10.0, norm_type=2),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(
        type='CosineAnnealingLR',
        T_max=max_epochs,
        eta_min_ratio=0.05,
        by_epoch=True,
        begin=0,
        end=max_epochs,
        convert_to_iter_based=True,
    ),
]
auto_scale_lr = dict(enable=False)

default_hooks = dict(
    logger=dict(interval=10), checkpoint=dict(interval=max_epochs, max_keep_ckpts=1, save_best=None)
)
log_processor = dict(window_size=10)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
