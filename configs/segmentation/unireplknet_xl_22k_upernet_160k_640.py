# UperNet 160k, ADE20K: UniRepLKNet-XL, IN-22K pretrained, 640x640.
# Paper: mIoU 55.2 (ss) / 55.6 (ms), 425M params, 3420G FLOPs
# (ss: single-scale test; ms: multi-scale + flip, `tools/test.py --tta`; FLOPs at 2560x640)
# The authors published no XL segmentation config: this one extends their B recipe
# (drop path 0.3, decay 0.9 over 12 layer ids) and starts, as B and L, from the IN-22K -> IN-1K
# 384 fine-tuned checkpoint (released for XL too: 88.0% top-1 in the authors' table).
_base_ = ['./_base_/upernet_unireplknet_160k_ade20k_640.py']
model = dict(
    backbone=dict(
        arch='xl',
        drop_path_rate=0.3,
        init_cfg=dict(
            checkpoint='https://huggingface.co/DingXiaoH/UniRepLKNet/resolve/main/unireplknet_xl_in22k_to_in1k_384_acc87.96.pth'
        ),
    ),
    decode_head=dict(in_channels=[256, 512, 1024, 2048]),
    auxiliary_head=dict(in_channels=1024),
)
optim_wrapper = dict(paramwise_cfg=dict(num_layers=12, decay_rate=0.9))
