# Mask R-CNN 3x, UniRepLKNet-T, IN-1K (drop path 0.3, the authors' COCO value). Not in the
# paper: untrained; params / FLOPs in docs/en/model_zoo.md.
_base_ = ['./_base_/mask_rcnn_unireplknet_3x.py']
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
