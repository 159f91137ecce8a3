# UperNet 160k, ADE20K: UniRepLKNet-L, IN-22K pretrained, 640x640.
# Paper: mIoU 54.5 (ss) / 55.0 (ms), 254M params, 2507G FLOPs
# (ss: single-scale test; ms: multi-scale + flip, `tools/test.py --tta`; FLOPs at 2560x640)
_base_ = ['./_base_/upernet_unireplknet_160k_ade20k_640.py']
model = dict(
    backbone=dict(
        arch='l',
        drop_path_rate=0.4,
        init_cfg=dict(
            checkpoint='https://huggingface.co/DingXiaoH/UniRepLKNet/resolve/main/unireplknet_l_in22k_to_in1k_384_acc87.88.pth'
        ),
    ),
    decode_head=dict(in_channels=[192, 384, 768, 1536]),
    auxiliary_head=dict(in_channels=768),
)
optim_wrapper = dict(paramwise_cfg=dict(num_layers=12, decay_rate=0.85))
