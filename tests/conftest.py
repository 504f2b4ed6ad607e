"""Data shared by the test files: small folders of real digit images."""

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits


@pytest.fixture(scope="session")
def digit_folder(tmp_path_factory):
    """A folder of class folders of real digit PNGs (12 per class)."""
    root = tmp_path_factory.mktemp("digit_folder")
    digits = load_digits()
    counts = dict.fromkeys(range(10), 0)
    for pixels, label in zip(digits.images, digits.target, strict=True):
        if counts[label] < 12:
            folder = root / str(label)
            folder.mkdir(exist_ok=True)
            image = Image.fromarray((pixels * 255 / 16).astype(np.uint8))
            image.save(folder / f"{counts[label]}.png")
            counts[label] += 1
    return root
