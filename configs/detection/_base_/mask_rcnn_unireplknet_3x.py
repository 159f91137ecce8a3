# Mask R-CNN 3x (multi-scale) with a UniRepLKNet backbone: MMDetection's ConvNeXt Mask R-CNN 3x
# recipe, the protocol ConvNeXt, Swin and InternImage report. Not in the UniRepLKNet paper.
#
# MMDetection's ConvNeXt config holds the recipe: Mask R-CNN with FPN, the DETR-style multi-scale
# + crop augmentation (shorter side 480-800, longer <= 1333), AdamW 1e-4 / wd 0.05, 1000
# iterations of linear warm-up, 36 epochs with steps at 27 and 33, batch 2 per GPU (16 in all).
# We change the backbone and the layer-wise lr decay: the authors' layer ids and their COCO
# decay (0.8 over 12, as in their Cascade recipe) in place of ConvNeXt's 0.95 over 6 groups.
_base_ = ['mmdet::convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py']

# replaces the ConvNeXt config's mmpretrain import
custom_imports = dict(imports=['mmunirep'], allow_failed_imports=False)

checkpoint_url = 'https://huggingface.co/DingXiaoH/UniRepLKNet/resolve/main/'

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmunirep.UniRepLKNet',
        arch='t',  # each config sets arch, drop_path_rate and its pretrained checkpoint
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.3,
        norm_cfg=dict(type='SyncBN'),
        with_cp=True,  # gradient checkpointing, as the authors' detection configs
        use_lk_op=False,  # as the authors' detection configs (small batches)
        init_cfg=dict(
            type='Pretrained', checkpoint=checkpoint_url + 'unireplknet_t_in1k_224_acc83.21.pth'
        ),
    ),
    neck=dict(in_channels=[80, 160, 320, 640]),
)

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',  # `tools/train.py --amp` switches to AmpOptimWrapper
    constructor='UniRepLKNetLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(num_layers=12, decay_rate=0.8),
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
)

# the lr is for a total batch of 16; `tools/train.py --auto-scale-lr` scales it to another
auto_scale_lr = dict(enable=False, base_batch_size=16)
val_evaluator = dict(classwise=True)  # the per-class AP table, as our Cascade configs
test_evaluator = val_evaluator
default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=5, save_best='auto'))
custom_hooks = [dict(type='ReproducibleResumeHook')]
