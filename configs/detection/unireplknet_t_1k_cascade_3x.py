# Cascade Mask R-CNN 3x, UniRepLKNet-T (0.3), paper: box 51.7 / mask 44.9, 89M params, 749G FLOPs
_base_ = ['./_base_/cascade_mask_rcnn_unireplknet_3x.py']
model = dict(
    backbone=dict(
        arch='t',
        drop_path_rate=0.3,
        init_cfg=dict(
            checkpoint='https://huggingface.co/DingXiaoH/UniRepLKNet/resolve/main/unireplknet_t_in1k_224_acc83.21.pth'
        ),
    ),
    neck=dict(in_channels=[80, 160, 320, 640]),
)
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.8))
