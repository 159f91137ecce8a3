# UperNet 80k on Cityscapes (512x1024 crops) with a UniRepLKNet backbone. Not in the
# UniRepLKNet paper.
#
# MMSegmentation's UperNet Cityscapes 80k config holds the heads and data: UperNet (channels
# 512, PPM 1/2/3/6) with an auxiliary FCN head on stage 3, SyncBN heads, RandomResize
# (2048, 1024) x [0.5, 2], 512x1024 crops, flip and photometric distortion, whole-image test at
# (2048, 1024), 80k iterations, batch 2 per GPU on 4 GPUs (8 in all). Its SGD 0.01 is for
# ResNets: the optimizer and schedule are the authors' ADE20K ones (AdamW 1e-4 / wd 0.05, their
# layer-wise decay, 1500 warm-up iterations then poly decay to 0).
_base_ = ['mmseg::upernet/upernet_r50_4xb2-80k_cityscapes-512x1024.py']

custom_imports = dict(imports=['mmunirep'], allow_failed_imports=False)

checkpoint_url = 'https://huggingface.co/DingXiaoH/UniRepLKNet/resolve/main/'

model = dict(
    pretrained=None,  # the ResNet config's 'open-mmlab://resnet50_v1c' is not ours
    backbone=dict(
        _delete_=True,
        type='mmunirep.UniRepLKNet',
        arch='s',  # each config sets arch, drop_path_rate and its pretrained checkpoint
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.3,
        norm_cfg=dict(type='SyncBN'),
        with_cp=True,  # gradient checkpointing, as the authors' segmentation configs
        use_lk_op=False,  # as the authors' segmentation configs (batch 2 per GPU)
        init_cfg=dict(
            type='Pretrained', checkpoint=checkpoint_url + 'unireplknet_s_in1k_224_acc83.91.pth'
        ),
    ),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384),  # on stage 3: dims[2]
)

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',  # `tools/train.py --amp` switches to AmpOptimWrapper
    constructor='UniRepLKNetLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(num_layers=12, decay_rate=0.9),
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
)
max_iters = 80000
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=8000)
default_hooks = dict(
    checkpoint=dict(
        type='CheckpointHook', by_epoch=False, interval=8000, max_keep_ckpts=3, save_best='mIoU'
    )
)

# the lr is for a total batch of 8; `tools/train.py --auto-scale-lr` scales it to another
auto_scale_lr = dict(enable=False, base_batch_size=8)
custom_hooks = [dict(type='ReproducibleResumeHook')]
