# UperNet 160k, ADE20K: UniRepLKNet-T, IN-1K pretrained, 512x512.
# Paper: mIoU 48.6 (ss) / 49.1 (ms), 61M params, 946G FLOPs
# (ss: single-scale test; ms: multi-scale + flip, `tools/test.py --tta`; FLOPs at 2048x512)
# As the authors' T config: no gradient checkpointing, and a flat lr over 9 layer ids
# (they note "decay_rate of 0.9 or 1.0 makes almost no difference").
_base_ = ['./_base_/upernet_unireplknet_160k_ade20k_512.py']
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
