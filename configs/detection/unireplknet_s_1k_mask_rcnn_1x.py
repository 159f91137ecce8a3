# Mask R-CNN 1x, UniRepLKNet-S, IN-1K (drop path 0.5, the authors' COCO value). Not in the
# paper: untrained; params / FLOPs in docs/en/model_zoo.md.
_base_ = ['./_base_/mask_rcnn_unireplknet_1x.py']
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
