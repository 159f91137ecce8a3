# UperNet 160k, ADE20K: UniRepLKNet-B, IN-22K pretrained, 640x640.
# Paper: mIoU 53.5 (ss) / 53.9 (ms), 130M params, 1850G FLOPs
# (ss: single-scale test; ms: multi-scale + flip, `tools/test.py --tta`; FLOPs at 2560x640)
_base_ = ['./_base_/upernet_unireplknet_160k_ade20k_640.py']
model = dict(
    backbone=dict(
        arch='b',
        drop_path_rate=0.3,
        init_cfg=dict(
            checkpoint='https://huggingface.co/DingXiaoH/UniRepLKNet/resolve/main/unireplknet_b_in22k_to_in1k_384_acc87.40.pth'
        ),
    ),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512),
)
optim_wrapper = dict(paramwise_cfg=dict(num_layers=12, decay_rate=0.9))
