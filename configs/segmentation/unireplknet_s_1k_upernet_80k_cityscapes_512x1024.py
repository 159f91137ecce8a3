# UperNet 80k, Cityscapes 512x1024, UniRepLKNet-S, IN-1K, as the authors' S ADE20K config: drop
# path 0.3, layer decay 0.9 over 12 layer ids. Not in the paper: untrained; params / FLOPs in
# docs/en/model_zoo.md.
_base_ = ['./_base_/upernet_unireplknet_80k_cityscapes_512x1024.py']
model = dict(
    backbone=dict(
        arch='s',
        drop_path_rate=0.3,
        init_cfg=dict(
            checkpoint='https://huggingface.co/DingXiaoH/UniRepLKNet/resolve/main/unireplknet_s_in1k_224_acc83.91.pth'
        ),
    ),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384),
)
optim_wrapper = dict(paramwise_cfg=dict(num_layers=12, decay_rate=0.9))
