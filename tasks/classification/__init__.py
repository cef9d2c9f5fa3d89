"""Image classification on registry backbones with Lightning (CIFAR-10/100, Places365, folders)."""

from .data.cifar import CIFARDataModule
from .data.places365 import ImageFolderDataModule, Places365DataModule
from .module import ClassificationModule

__all__ = ["CIFARDataModule", "ClassificationModule", "ImageFolderDataModule", "Places365DataModule"]
