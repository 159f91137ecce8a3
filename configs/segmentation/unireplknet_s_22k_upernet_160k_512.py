# UperNet 160k, ADE20K: UniRepLKNet-S, IN-22K pretrained, 512x512.
# Paper: mIoU 51.9 (ss) / 52.7 (ms), 86M params, 1036G FLOPs
# (ss: single-scale test; ms: multi-scale + flip, `tools/test.py --tta`; FLOPs at 2048x512)
# Layer-wise decay 0.9 over 12 layer ids, as the authors' S IN-22K configs at the head of their
# repository (9 existed only in a commit they replaced minutes later).
_base_ = ['./_base_/upernet_unireplknet_160k_ade20k_512.py']
model = dict(
    backbone=dict(
        arch='s',
        drop_path_rate=0.3,
        init_cfg=dict(
            checkpoint='https://huggingface.co/DingXiaoH/UniRepLKNet/resolve/main/unireplknet_s_in22k_to_in1k_384_acc86.44.pth'
        ),
    ),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384),
)
optim_wrapper = dict(paramwise_cfg=dict(num_layers=12, decay_rate=0.9))
