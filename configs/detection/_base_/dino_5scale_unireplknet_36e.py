# DINO (5 scales) 36 epochs with steps at 27 and 33: MMDetection's DINO Swin-L 36e schedule on
# the 12-epoch recipe of ./dino_5scale_unireplknet_12e.py. Not in the UniRepLKNet paper.
_base_ = ['./dino_5scale_unireplknet_12e.py']

max_epochs = 36
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1)
]
