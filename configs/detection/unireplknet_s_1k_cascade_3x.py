# Cascade Mask R-CNN 3x, UniRepLKNet-S (0.5), paper: box 53.0 / mask 45.9, 113M params, 835G FLOPs
_base_ = ['./_base_/cascade_mask_rcnn_unireplknet_3x.py']
model = dict(
    backbone=dict(
        arch='s',
        drop_path_rate=0.5,
        init_cfg=dict(
            checkpoint='https://huggingface.co/DingXiaoH/UniRepLKNet/resolve/main/unireplknet_s_in1k_224_acc83.91.pth'
        ),
    ),
    neck=dict(in_channels=[96, 192, 384, 768]),
)
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.8))
