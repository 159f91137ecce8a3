# DINO 5-scale 12e, UniRepLKNet-B, IN-22K (drop path 0.6, layer decay 0.8: the authors' COCO
# values). Not in the paper: untrained; params / FLOPs in docs/en/model_zoo.md.
_base_ = ['./_base_/dino_5scale_unireplknet_12e.py']
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
