"""Data sets as tensors: 2-D synthetic distributions, digits, MNIST, CIFAR-10, CelebA, image folders,
and arrays from files (.npy, .npz, .pt, Parquet: :func:`load_array`).

Image loaders return :class:`ImageDataset` (images (N, C, H, W) float32 in [-1, 1]); 2-D samplers
return :class:`PointDataset` (points (N, 2) float32). :func:`load_dataset` parses the short specs
the ``kfm`` command uses (``digits``, ``moons``, ``mnist:PATH`` ...).
"""
from .arrays import ARRAY_FORMATS, load_array
from .celeba import load_celeba
from .cifar10 import CIFAR10_CLASSES, load_cifar10, load_cifar10_sprite, read_cifar_batch
from .digits import load_digits
from .images import ImageDataset, ImageSource, list_image_labels, load_image_folder
from .mnist import load_mnist, read_idx
from .registry import DATA_SPECS, load_dataset
from .subset import dataset_rows, select_indices, subset
from .synthetic import GaussianMixture, PointDataset, checkerboard, gaussian_mixture, two_moons

__all__ = [
    "ARRAY_FORMATS", "CIFAR10_CLASSES", "DATA_SPECS", "GaussianMixture", "ImageDataset", "ImageSource",
    "PointDataset", "checkerboard", "dataset_rows", "gaussian_mixture", "list_image_labels", "load_array",
    "load_celeba", "load_cifar10", "load_cifar10_sprite", "load_dataset", "load_digits", "load_image_folder",
    "load_mnist", "read_cifar_batch", "read_idx", "select_indices", "subset", "two_moons",
]
