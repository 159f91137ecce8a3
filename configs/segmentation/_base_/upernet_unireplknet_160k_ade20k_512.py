# UperNet 160k on ADE20K with a UniRepLKNet backbone: the authors' recipe on MMSegmentation 1.x,
# 512x512 crops (the IN-1K models, and S IN-22K at 512).
#
# MMSegmentation's ConvNeXt config already holds most of that recipe: UperNet (channels 512, PPM
# 1/2/3/6) with an auxiliary FCN head on stage 3 (loss weight 0.4), SyncBN heads, ADE20K with
# RandomResize (2048, 512) x [0.5, 2], 512 crops (cat_max_ratio 0.75), flip and photometric
# distortion, AdamW 1e-4 / (0.9, 0.999) / wd 0.05, 1500 iterations of linear warm-up from 1e-6 x lr
# then poly decay (power 1.0) to 0 over 160k iterations, batch 2 per GPU. We change the backbone,
# the layer-wise lr decay (the authors' layer ids), AMP off by default, whole-image testing and the
# test-time resize to a multiple of 32, as the authors' configs do.
_base_ = ['mmseg::convnext/convnext-base_upernet_8xb2-amp-160k_ade20k-512x512.py']

# replaces the ConvNeXt config's mmpretrain import
custom_imports = dict(imports=['mmunirep'], allow_failed_imports=False)

checkpoint_url = 'https://huggingface.co/DingXiaoH/UniRepLKNet/resolve/main/'
crop_size = (512, 512)
test_scale = (2048, 512)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        _delete_=True,
        type='mmunirep.UniRepLKNet',
        arch='s',  # each config sets arch, drop_path_rate and its pretrained checkpoint
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.3,
        norm_cfg=dict(type='SyncBN'),
        with_cp=True,  # gradient checkpointing, as the authors (saves GPU memory)
        # the authors turn their large-kernel op off for segmentation (batch 2 per GPU)
        use_lk_op=False,
        init_cfg=dict(
            type='Pretrained', checkpoint=checkpoint_url + 'unireplknet_s_in1k_224_acc83.91.pth'
        ),
    ),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150),  # on stage 3: dims[2]
    # the authors test whole images (the ConvNeXt config slides 512 windows)
    test_cfg=dict(_delete_=True, mode='whole'),
)

# AdamW 1e-4, wd 0.05, layer-wise lr decay (the authors' layer ids, heads at the base lr)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',  # `tools/train.py --amp` switches to AmpOptimWrapper
    constructor='UniRepLKNetLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(num_layers=12, decay_rate=0.9),
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
)

max_iters = 160000
# the authors' mmcv schedule: poly over all iterations, multiplied by a linear warm-up over the
# first 1500 (mmengine's schedulers chain: both start at 0)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=max_iters),
]
# the authors evaluate every 4000 iterations and keep the best mIoU
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=4000)
default_hooks = dict(
    checkpoint=dict(
        type='CheckpointHook', by_epoch=False, interval=4000, max_keep_ckpts=3, save_best='mIoU'
    )
)

# The recipe's lr is for a total batch of 16 (8 GPUs x 2). It is not scaled with the GPU count
# (the authors' runs and MMSegmentation's convention): `tools/train.py --auto-scale-lr` does.
train_dataloader = dict(batch_size=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)

# Single-scale test: the short side to 512 (long side at most 2048), then, as the authors'
# MMSegmentation 0.x configs, resize to a multiple of 32. The labels are loaded after the resize,
# so mIoU is computed at the original resolution.
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=test_scale, keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
val_dataloader = dict(batch_size=1, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

# Multi-scale + flip test (`tools/test.py --tta`, the paper's "ms" mIoU): as MultiScaleFlipAug of
# MMSegmentation 0.x, the ratios scale the test scale (2048, 512), not the original image (the
# scale_factor=r of MMSegmentation 1.x's ADE20K config would).
img_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
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
tta_model = dict(type='SegTTAModel')

# a run resumed after an interruption continues as the uninterrupted one would (mmunirep hook)
custom_hooks = [dict(type='ReproducibleResumeHook')]
