# Cascade Mask R-CNN 3x, UniRepLKNet-B (0.6), paper: box 54.8 / mask 47.4, 155M params, 978G FLOPs
_base_ = ['./_base_/cascade_mask_rcnn_unireplknet_3x_ema.py']
model = dict(
    backbone=dict(
        arch='b',
        drop_path_rate=0.6,
        init_cfg=dict(
            checkpoint='https://huggingface.co/DingXiaoH/UniRepLKNet/resolve/main/unireplknet_b_in22k_to_in1k_384_acc87.40.pth'
        ),
    ),
    neck=dict(in_channels=[128, 256, 512, 1024]),
)
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.8))
