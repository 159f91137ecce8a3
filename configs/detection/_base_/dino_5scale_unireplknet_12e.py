# DINO (5 scales, 12 epochs) with a UniRepLKNet backbone: MMDetection 3's DINO Swin-L recipe.
# Not in the UniRepLKNet paper.
#
# MMDetection's config holds the recipe: DINO with 900 queries, 6 + 6 deformable-attention layers
# over 5 feature levels (the 4 stages through a ChannelMapper with GN, plus a stride-2 conv on
# the last), contrastive denoising, the DETR-style multi-scale + crop augmentation, AdamW 1e-4 /
# wd 1e-4, gradient clipping at 0.1, 12 epochs with a step at 11, batch 2 per GPU (16 in all).
# We change the backbone and its lr: MMDetection scales the whole Swin backbone by 0.1; here the
# authors' layer ids decay it layer by layer (0.8 over 12 for B, 0.7 for L: their COCO values),
# and, as MMSegmentation's Mask2Former recipe, the query, level and denoising-label embeddings
# get no weight decay (with the authors' rule for the rest: none on 1-D parameters and biases).
_base_ = ['mmdet::dino/dino-5scale_swin-l_8xb2-12e_coco.py']

custom_imports = dict(imports=['mmunirep'], allow_failed_imports=False)

checkpoint_url = 'https://huggingface.co/DingXiaoH/UniRepLKNet/resolve/main/'

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmunirep.UniRepLKNet',
        arch='b',  # each config sets arch, drop_path_rate and its pretrained checkpoint
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.6,
        norm_cfg=dict(type='SyncBN'),
        with_cp=True,  # gradient checkpointing, as the authors' detection configs
        use_lk_op=False,  # as the authors' detection configs (small batches)
        init_cfg=dict(
            type='Pretrained',
            checkpoint=checkpoint_url + 'unireplknet_b_in22k_to_in1k_384_acc87.40.pth',
        ),
    ),
    neck=dict(in_channels=[128, 256, 512, 1024]),
)

no_decay = dict(decay_mult=0.0)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',  # `tools/train.py --amp` switches to AmpOptimWrapper
    constructor='UniRepLKNetLayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=1e-4),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    paramwise_cfg=dict(
        num_layers=12,
        decay_rate=0.8,
        custom_keys={
            'query_embedding': no_decay,
            'level_embed': no_decay,
            'dn_query_generator.label_embedding': no_decay,
        },
    ),
)

# the lr is for a total batch of 16; `tools/train.py --auto-scale-lr` scales it to another
auto_scale_lr = dict(enable=False, base_batch_size=16)
val_evaluator = dict(classwise=True)  # the per-class AP table, as our Cascade configs
test_evaluator = val_evaluator
default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=5, save_best='auto'))
custom_hooks = [dict(type='ReproducibleResumeHook')]
