# Cascade Mask R-CNN 3x, UniRepLKNet-S (0.5), paper: box 54.3 / mask 47.1, 113M params, 835G FLOPs
_base_ = ['./_base_/cascade_mask_rcnn_unireplknet_3x_ema.py']
model = dict(
    backbone=dict(
        arch='s',
        drop_path_rate=0.5,
        init_cfg=dict(
            checkpoint='https://huggingface.co/DingXiaoH/UniRepLKNet/resolve/main/unireplknet_s_in22k_to_in1k_384_acc86.44.pth'
        ),
    ),
    neck=dict(in_channels=[96, 192, 384, 768]),
)
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.8))
