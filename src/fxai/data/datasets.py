"""Real datasets from a local folder, in their standard on-disk formats (nothing is downloaded).

- MNIST: ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (the idx files, uncompressed).
- CIFAR-10: ``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` (the python pickles).
- An image folder: ``root/<class name>/<image files>`` (torchvision's ``ImageFolder``).

Images come as float tensors ``[C, H, W]`` in [0, 1]; a missing file is reported
with the exact path expected and where to get the data.
"""

from __future__ import annotations

import functools
import os

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta")


def _root(root, what: str) -> str:
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a path to the folder holding {what}, got {type(root).__name__}")
    return os.fspath(root)


def _missing(folder: str, names) -> list[str]:
    return [n for n in names if not os.path.isfile(os.path.join(folder, n))]


def mnist(root, *, train: bool = True, transform=None):
    """MNIST from ``root`` (the folder holding ``MNIST/raw``): a dataset of ``(image [1, 28, 28], label)``.

    Reads the idx-ubyte files with ``torchvision.datasets.MNIST(download=False)``.
    ``transform`` (a callable on the PIL image) replaces the default conversion to a tensor.

    Example:
        >>> train = fxai.data.mnist("~/data", train=True)  # doctest: +SKIP
    """
    root = os.path.expanduser(_root(root, "MNIST"))
    raw = os.path.join(root, "MNIST", "raw")
    prefix = "train" if train else "t10k"
    missing = _missing(raw, [f for f in MNIST_FILES if f.startswith(prefix)])
    if missing:
        raise FileNotFoundError(
            f"MNIST not found: missing {', '.join(os.path.join(raw, m) for m in missing)}; put the uncompressed "
            "idx-ubyte files from https://ossci-datasets.s3.amazonaws.com/mnist/ there (gunzip the .gz files)")
    import torchvision
    from torchvision.transforms import functional as TF

    return torchvision.datasets.MNIST(root, train=train, download=False, transform=transform or TF.to_tensor)


@functools.cache
def _local_cifar10():
    """torchvision's CIFAR-10 reader, checking that the files exist rather than their MD5 sums
    (so that a subset written in the same format loads too). Built on first use: torchvision is
    imported only when a dataset is read."""
    import torchvision

    base = torchvision.datasets.CIFAR10
    return type("_LocalCIFAR10", (base,), {"train_list": [[name, None] for name, _ in base.train_list],
                                            "test_list": [[name, None] for name, _ in base.test_list],
                                            "meta": {**base.meta, "md5": None}, "__module__": __name__})


def __getattr__(name: str):
    if name == "_LocalCIFAR10":  # the reader's class by name, for pickling (e.g. into DataLoader workers)
        return _local_cifar10()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def cifar10(root, *, train: bool = True, transform=None):
    """CIFAR-10 from ``root`` (the folder holding ``cifar-10-batches-py``): a dataset of ``(image [3, 32, 32], label)``.

    Reads the python pickle batches with ``torchvision.datasets.CIFAR10(download=False)``;
    ``dataset.classes`` holds the class names from ``batches.meta``.

    Example:
        >>> test = fxai.data.cifar10("~/data", train=False)  # doctest: +SKIP
    """
    root = os.path.expanduser(_root(root, "CIFAR-10"))
    folder = os.path.join(root, "cifar-10-batches-py")
    missing = _missing(folder, CIFAR10_FILES)
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 not found: missing {', '.join(os.path.join(folder, m) for m in missing)}; extract "
            f"https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz into {root}")
    from torchvision.transforms import functional as TF

    try:
        return _local_cifar10()(root, train=train, download=False, transform=transform or TF.to_tensor)
    except Exception as err:  # noqa: BLE001 - a damaged pickle, whatever the unpickler raises
        raise ValueError(f"CIFAR-10 files in {folder} could not be read ({type(err).__name__}: {err})") from None


def image_folder(root, *, size: int | tuple[int, int] | None = None, transform=None):
    """Images sorted in class folders ``root/<class>/<file>``: a dataset of ``(image [3, H, W], class index)``.

    ``size`` resizes every image (an int resizes the short side, a pair gives
    ``(height, width)``), so that they batch together; ``transform`` (a callable on
    the PIL image) replaces the default resize-and-convert. ``dataset.classes``
    lists the class folders in index order.

    Example:
        >>> data = fxai.data.image_folder("photos/", size=(224, 224))  # doctest: +SKIP
    """
    root = os.path.expanduser(_root(root, "the image folder"))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder not found: {root} (expected {root}/<class name>/<image files>)")
    import torchvision
    from torchvision.transforms import functional as TF

    if transform is None:
        def transform(img):
            img = img.convert("RGB")
            return TF.to_tensor(TF.resize(img, size) if size is not None else img)
    try:
        return torchvision.datasets.ImageFolder(root, transform=transform)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"no images found in {root}: expected {root}/<class name>/<image files> "
                                f"({' '.join(str(err).split())})") from None
