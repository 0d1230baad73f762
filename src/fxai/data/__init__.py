"""Data: the built-in synthetic dataset with ground-truth masks, and readers of local MNIST, CIFAR-10 and image folders."""

from .datasets import cifar10 as cifar10
from .datasets import image_folder as image_folder
from .datasets import mnist as mnist
from .synthetic import CLASS_NAMES as CLASS_NAMES
from .synthetic import Shapes as Shapes
from .synthetic import ShapesBatch as ShapesBatch
from .synthetic import shapes as shapes
from .synthetic import shapes_at as shapes_at

__all__ = ["CLASS_NAMES", "Shapes", "ShapesBatch", "cifar10", "image_folder", "mnist", "shapes", "shapes_at"]
