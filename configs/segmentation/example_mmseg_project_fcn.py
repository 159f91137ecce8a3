# From an existing MMSegmentation project: take one of its configs, import mmunirep and swap the
# backbone; MMSegmentation's own tools/train.py and tools/test.py then work as they are, e.g.
#
#   MMSEG_TOOLS=$(python -c "import mmseg, os; print(os.path.dirname(mmseg.__file__))")/.mim/tools
#   python $MMSEG_TOOLS/train.py configs/segmentation/example_mmseg_project_fcn.py
#
# Here: MMSegmentation's FCN (ResNet-50-D8) 80k ADE20K config with a UniRepLKNet-T (IN-1K) backbone.
# The FCN heads keep their own settings; they read the stride-32 (decode) and stride-16 (auxiliary)
# UniRepLKNet features instead of the dilated ResNet's stride-8 ones.
_base_ = ['mmseg::fcn/fcn_r50-d8_4xb4-80k_ade20k-512x512.py']

custom_imports = dict(imports=['mmunirep'], allow_failed_imports=False)

model = dict(
    # EncoderDecoder would hand the ResNet config's 'open-mmlab://resnet50_v1c' to our backbone
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='UniRepLKNet',  # registered in the root registry: resolves from the mmseg scope
        arch='t',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        norm_cfg=dict(type='SyncBN'),
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://huggingface.co/DingXiaoH/UniRepLKNet/resolve/main/'
            'unireplknet_t_in1k_224_acc83.21.pth',
        ),
    ),
    # the heads' in_index: 3 (the last stage) for the decode head, 2 for the auxiliary head
    decode_head=dict(in_channels=640),
    auxiliary_head=dict(in_channels=320),
)

# large-kernel ConvNets are fine-tuned with AdamW (the base's SGD 0.01 is for ResNets), with the
# authors' layer-wise lr decay (ADE20K: 0.9 over 12 layer ids), as the detection example does
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='UniRepLKNetLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(num_layers=12, decay_rate=0.9),
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
)
# the base's poly decay ends at eta_min=1e-4, the AdamW lr itself: warm up, then decay to 0
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=80000),
]
