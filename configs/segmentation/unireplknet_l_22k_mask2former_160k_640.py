# Mask2Former 160k, ADE20K 640x640, UniRepLKNet-L, IN-22K (drop path 0.4, layer decay 0.85: the
# authors' ADE20K values). Not in the paper: untrained; params / FLOPs in docs/en/model_zoo.md.
_base_ = ['./_base_/mask2former_unireplknet_160k_ade20k_640.py']
model = dict(
    backbone=dict(
        arch='l',
        drop_path_rate=0.4,
        init_cfg=dict(
            checkpoint='https://huggingface.co/DingXiaoH/UniRepLKNet/resolve/main/unireplknet_l_in22k_to_in1k_384_acc87.88.pth'
        ),
    ),
    decode_head=dict(in_channels=[192, 384, 768, 1536]),
)
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.85))
