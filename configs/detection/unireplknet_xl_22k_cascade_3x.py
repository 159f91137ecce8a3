# Cascade Mask R-CNN 3x, UniRepLKNet-XL (0.7), paper: box 56.4 / mask 49.0, 443M params, 1952G FLOPs
_base_ = ['./_base_/cascade_mask_rcnn_unireplknet_3x_ema.py']
model = dict(
    backbone=dict(
        arch='xl',
        drop_path_rate=0.7,
        init_cfg=dict(
            checkpoint='https://huggingface.co/DingXiaoH/UniRepLKNet/resolve/main/unireplknet_xl_in22k_to_in1k_384_acc87.96.pth'
        ),
    ),
    neck=dict(in_channels=[256, 512, 1024, 2048]),
)
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.7))
