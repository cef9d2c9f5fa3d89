"""Data modules of the classification benchmarks.

``cifar.py``: CIFAR-10/100. ``places365.py``: Places365 and ImageNet-style folders, on the shared
``image_module.py`` (transforms, decode paths, loaders), with reduced-size JPEG decoding in
``decode.py``, decoding on the training device in ``gpu_decode.py`` and litdata shards
(``sebench prepare-shards``) in ``shards.py``.
"""
