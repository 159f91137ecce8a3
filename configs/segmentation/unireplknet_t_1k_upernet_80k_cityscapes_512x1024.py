# UperNet 80k, Cityscapes 512x1024, UniRepLKNet-T, IN-1K, as the authors' T ADE20K config: drop
# path 0.2, no gradient checkpointing, a flat lr over 9 layer ids. Not in the paper: untrained;
# params / FLOPs in docs/en/model_zoo.md.
_base_ = ['./_base_/upernet_unireplknet_80k_cityscapes_512x1024.py']
model = dict(
    backbone=dict(
        arch='t',
        drop_path_rate=0.2,
        with_cp=False,
        init_cfg=dict(
            checkpoint='https://huggingface.co/DingXiaoH/UniRepLKNet/resolve/main/unireplknet_t_in1k_224_acc83.21.pth'
        ),
    ),
    decode_head=dict(in_channels=[80, 160, 320, 640]),
    auxiliary_head=dict(in_channels=320),
)
optim_wrapper = dict(paramwise_cfg=dict(num_layers=9, decay_rate=1.0))
