# DINO 5-scale 12e, UniRepLKNet-L, IN-22K (drop path 0.7, layer decay 0.7: the authors' COCO
# values). Not in the paper: untrained; params / FLOPs in docs/en/model_zoo.md.
_base_ = ['./_base_/dino_5scale_unireplknet_12e.py']
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
