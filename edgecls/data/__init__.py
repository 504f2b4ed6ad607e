"""Loading labelled images (folders, list files, built-ins) into checked uint8 arrays."""

from edgecls.data.builtin import BUILTIN_DATASETS
from edgecls.data.images import (
    IMAGE_EXTENSIONS,
    BadImageError,
    load_image,
    printable_path,
    to_float,
    to_pixels,
)
from edgecls.data.loader import load_configured_dataset, load_dataset
from edgecls.data.report import describe
from edgecls.data.splits import Dataset, ImageSplit

__all__ = [
    "BUILTIN_DATASETS",
    "IMAGE_EXTENSIONS",
    "BadImageError",
    "Dataset",
    "ImageSplit",
    "describe",
    "load_configured_dataset",
    "load_dataset",
    "load_image",
    "printable_path",
    "to_float",
    "to_pixels",
]
