# UperNet 160k, ADE20K: UniRepLKNet-S, IN-1K pretrained, 512x512.
# Paper: mIoU 50.5 (ss) / 51.0 (ms), 86M params, 1036G FLOPs
# (ss: single-scale test; ms: multi-scale + flip, `tools/test.py --tta`; FLOPs at 2048x512)
_base_ = ['./_base_/upernet_unireplknet_160k_ade20k_512.py']
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
