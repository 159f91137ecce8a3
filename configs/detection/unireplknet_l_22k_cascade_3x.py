# Cascade Mask R-CNN 3x, UniRepLKNet-L (0.7), paper: box 55.8 / mask 48.4, 276M params, 1385G FLOPs
_base_ = ['./_base_/cascade_mask_rcnn_unireplknet_3x_ema.py']
model = dict(
    backbone=dict(
        arch='l',
        drop_path_rate=0.7,
        init_cfg=dict(
            checkpoint='https://huggingface.co/DingXiaoH/UniRepLKNet/resolve/main/unireplknet_l_in22k_to_in1k_384_acc87.88.pth'
        ),
    ),
    neck=dict(in_channels=[192, 384, 768, 1536]),
)
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.7))
