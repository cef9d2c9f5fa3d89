"""Input statistics of the registry models' training data: RGB in [0, 1], per-channel mean and std.

ImageNet's are the normalisation of every ImageNet-style model (and of Places365, trained from
scratch with the same recipe); the CIFAR models use their dataset's own statistics (of the 50k
training images), which the CIFAR data module normalises with and ``pretrained_cfg`` reports.
"""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}
