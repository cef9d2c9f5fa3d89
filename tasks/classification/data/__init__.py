"""Data modules of the classification benchmarks (CIFAR-10/100 in ``cifar.py``)."""
