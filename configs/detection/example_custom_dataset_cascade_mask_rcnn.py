# Train on your own dataset (docs/en/user_guides/custom_dataset.md): the Cascade Mask R-CNN 3x
# recipe with UniRepLKNet-T (IN-1K) on a COCO-format instance segmentation dataset of your
# classes. Change `data_root`, `classes` (and `palette`, the drawing colours), and the annotation
# files / image folders below; the heads' num_classes follow from `classes`.
#
# As written it trains on the quick start's generated shapes:
#   python tools/misc/make_shapes_coco.py --out data/shapes_coco
#   python tools/train.py configs/detection/example_custom_dataset_cascade_mask_rcnn.py
_base_ = ['./unireplknet_t_1k_cascade_3x.py']

data_root = 'data/shapes_coco/'
classes = ('circle', 'square', 'triangle')
palette = [(220, 20, 60), (0, 170, 0), (30, 60, 255)]  # RGB, one per class (optional)
num_classes = len(classes)
metainfo = dict(classes=classes, palette=palette)

# the recipe's three 4conv1fc GIoU box heads, with our class count (a list in a config is replaced
# whole, so each head is written out)
model = dict(
    roi_head=dict(
        bbox_head=[
            dict(
                type='ConvFCBBoxHead',
                num_shared_convs=4,
                num_shared_fcs=1,
                in_channels=256,
                conv_out_channels=256,
                fc_out_channels=1024,
                roi_feat_size=7,
                num_classes=num_classes,
                bbox_coder=dict(
                    type='DeltaXYWHBBoxCoder', target_means=[0.0, 0.0, 0.0, 0.0], target_stds=stds
                ),
                reg_class_agnostic=False,
                reg_decoded_bbox=True,
                norm_cfg=dict(type='SyncBN', requires_grad=True),
                loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
                loss_bbox=dict(type='GIoULoss', loss_weight=10.0),
            )
            for stds in ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])
        ],
        mask_head=dict(num_classes=num_classes),
    )
)

# images under data_root + data_prefix, annotations in COCO's JSON format (category names must
# be those of `classes`)
train_dataloader = dict(
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
    )
)
val_dataloader = dict(
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
    )
)
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
