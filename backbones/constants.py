"""Input statistics of the registry models' training data: RGB in [0, 1], per-channel mean and std.

ImageNet's are the normalisation of every ImageNet-style model (and of Places365, trained from
scratch with the same recipe); the CIFAR models use their dataset's own statistics, kept beside
the CIFAR data module.
"""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
