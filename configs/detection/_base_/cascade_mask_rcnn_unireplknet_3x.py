# Cascade Mask R-CNN 3x with a UniRepLKNet backbone: the authors' recipe on MMDetection 3.x.
#
# MMDetection's ConvNeXt config already holds the rest of that recipe: Cascade Mask R-CNN with FPN,
# 4conv1fc GIoU bbox heads with SyncBN, the DETR-style multi-scale + crop augmentation, 36 epochs
# with steps at 27 and 33, batch 2 per GPU. We change the backbone, the optimizer and the warm-up.
_base_ = [
    'mmdet::convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'
]

# replaces the ConvNeXt config's mmpretrain import
custom_imports = dict(imports=['mmunirep'], allow_failed_imports=False)


model = dict(
    backbone=dict(
        _delete_=True,
        type='mmunirep.UniRepLKNet',
        arch='s',  # each config sets arch, drop_path_rate and its pretrained checkpoint
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.5,
        norm_cfg=dict(type='SyncBN'),
        with_cp=True,  # gradient checkpointing, as the authors (saves GPU memory)
        # the authors' configs turn their large-kernel op off for detection (small batches)
        use_lk_op=False,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://huggingface.co/DingXiaoH/UniRepLKNet/resolve/main/unireplknet_s_in1k_224_acc83.91.pth',
        ),
    ),
    neck=dict(in_channels=[96, 192, 384, 768]),
)

# AdamW 1e-4, wd 0.05, layer-wise lr decay over 12 layers (authors' layer ids).
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',  # `tools/train.py --amp` switches to AmpOptimWrapper
    constructor='UniRepLKNetLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(num_layers=12, decay_rate=0.8),
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
)

max_epochs = 36
param_scheduler = [
    # the authors' schedule_3x: linear warm-up over 500 iterations from 0.001 x lr
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(
        type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1
    ),
]

# The recipe's lr is for a total batch of 16 (8 GPUs x 2). It is not scaled with the GPU count
# (the authors' runs and MMDetection's convention): `tools/train.py --auto-scale-lr` does.
auto_scale_lr = dict(enable=False, base_batch_size=16)

# the per-class AP table after the COCO metrics, as the authors' configs print it
val_evaluator = dict(classwise=True)
test_evaluator = val_evaluator

default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=5, save_best='auto'))

# a run resumed after an interruption continues as the uninterrupted one would (mmunirep hook)
custom_hooks = [dict(type='ReproducibleResumeHook')]
