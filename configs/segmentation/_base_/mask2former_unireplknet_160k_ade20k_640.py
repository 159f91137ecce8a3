# Mask2Former 160k on ADE20K at 640x640 with a UniRepLKNet backbone: MMSegmentation's Swin-B
# IN-22K recipe. Not in the UniRepLKNet paper.
#
# MMSegmentation's config holds the recipe: Mask2Former (100 queries, a 6-layer deformable-
# attention pixel decoder over 3 levels, a 9-layer masked-attention decoder), ADE20K with
# short-side resize 320-1280 (longer <= 2560), 640 crops, flip and photometric distortion, test
# at (2560, 640) on whole images, AdamW 1e-4 / wd 0.05, gradient clipping at 0.01, poly decay
# (power 0.9) over 160k iterations, batch 2 per GPU (16 in all). We change the backbone and its
# lr: MMSegmentation scales the whole Swin backbone by 0.1; here the authors' layer ids decay it
# layer by layer (0.9 over 12 for B, 0.85 for L: their ADE20K values). The recipe's custom keys
# (no weight decay on the query features / embeddings and level embeddings) and norm_decay_mult=0
# stay, with the authors' rule for the rest (no weight decay on 1-D parameters and biases).
_base_ = ['mmseg::mask2former/mask2former_swin-b-in22k-384x384-pre_8xb2-160k_ade20k-640x640.py']

# the pixel decoder is MMDetection's (mmdet.MSDeformAttnPixelDecoder)
custom_imports = dict(imports=['mmdet.models', 'mmunirep'], allow_failed_imports=False)

checkpoint_url = 'https://huggingface.co/DingXiaoH/UniRepLKNet/resolve/main/'

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmunirep.UniRepLKNet',
        arch='b',  # each config sets arch, drop_path_rate and its pretrained checkpoint
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.3,
        norm_cfg=dict(type='SyncBN'),
        with_cp=True,  # gradient checkpointing, as the authors' segmentation configs
        use_lk_op=False,  # as the authors' segmentation configs (batch 2 per GPU)
        init_cfg=dict(
            type='Pretrained',
            checkpoint=checkpoint_url + 'unireplknet_b_in22k_to_in1k_384_acc87.40.pth',
        ),
    ),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
)

embed_multi = dict(lr_mult=1.0, decay_mult=0.0)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',  # `tools/train.py --amp` switches to AmpOptimWrapper
    constructor='UniRepLKNetLayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    clip_grad=dict(max_norm=0.01, norm_type=2),
    paramwise_cfg=dict(
        num_layers=12,
        decay_rate=0.9,
        custom_keys=dict(query_embed=embed_multi, query_feat=embed_multi, level_embed=embed_multi),
        norm_decay_mult=0.0,
    ),
)

# the lr is for a total batch of 16; `tools/train.py --auto-scale-lr` scales it to another
auto_scale_lr = dict(enable=False, base_batch_size=16)
custom_hooks = [dict(type='ReproducibleResumeHook')]
