# Using UniRepLKNet from an existing MMDetection project: take any MMDetection config, import
# mmunirep and swap the backbone (and the neck's input channels). Nothing else of mmunirep is
# needed; MMDetection's own tools work on it:
#
#   python $(python -c "import mmdet, os; print(os.path.dirname(mmdet.__file__))")/.mim/tools/train.py \
#       configs/detection/example_mmdet_project_mask_rcnn.py
#
# (or tools/train.py of an MMDetection checkout, or mmunirep's tools/train.py).
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py']

# registers UniRepLKNet (and the layer-decay optimizer constructor) when the config is loaded
custom_imports = dict(imports=['mmunirep'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,  # drop the ResNet arguments
        type='mmunirep.UniRepLKNet',  # type='UniRepLKNet' works as well
        arch='t',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        norm_cfg=dict(type='BN'),  # dict(type='SyncBN') for multi-GPU training
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://huggingface.co/DingXiaoH/UniRepLKNet/resolve/main/unireplknet_t_in1k_224_acc83.21.pth',
        ),
    ),
    # UniRepLKNet-T stage widths (a: 40-320, s: 96-768, b: 128-1024, l: 192-1536, xl: 256-2048)
    neck=dict(in_channels=[80, 160, 320, 640]),
)

# large-kernel ConvNets are fine-tuned with AdamW (the 1x schedule's SGD 0.02 is for ResNets)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='UniRepLKNetLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(num_layers=12, decay_rate=0.8),
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
)
