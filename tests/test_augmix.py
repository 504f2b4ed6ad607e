"""Per-image policies (AugMix, AutoAugment, RandAugment) in a DataLoader: shapes, that they really
augment, determinism, drop_last."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from edgecls.data.per_image import PerImageDataset, per_image_loader
from edgecls.data.splits import ImageSplit

SIZE = 32


def smooth_split(n: int = 16, channels: int = 3) -> ImageSplit:
    """Gradients with a bright square: structure AugMix can visibly change, unlike noise."""
    gen = torch.Generator().manual_seed(123)
    ramp = torch.linspace(0, 1, SIZE)
    images = []
    for _ in range(n):
        tint = torch.rand(channels, 1, 1, generator=gen)
        image = 40 + 150 * tint * (ramp.view(1, -1) + ramp.view(-1, 1)).unsqueeze(0) / 2
        x, y = torch.randint(4, SIZE - 12, (2,), generator=gen).tolist()
        image[:, y : y + 8, x : x + 8] = 230
        images.append(image.round().to(torch.uint8))
    labels = torch.arange(n) % 4
    return ImageSplit(torch.stack(images), labels, [f"img{i}" for i in range(n)])


def loader(split: ImageSplit, seed: int, *, batch_size: int = 5, workers: int = 0, **kwargs):
    options = {"input_size": SIZE, "grayscale": split.images.shape[1] == 1, "hflip": True}
    return per_image_loader(
        split,
        batch_size,
        torch.Generator().manual_seed(seed),
        workers=workers,
        **(options | kwargs),
    )


def as_lists(batches) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    images, labels = zip(*batches, strict=True)
    return list(images), list(labels)


@pytest.mark.parametrize("channels", [3, 1])
def test_batches_have_the_split_shape_and_dtype(channels):
    split = smooth_split(channels=channels)
    for images, labels in loader(split, seed=0):
        assert images.shape == (5, channels, SIZE, SIZE)
        assert images.dtype == torch.uint8
        assert labels.dtype == torch.int64


def test_images_change_but_keep_their_statistics():
    split = smooth_split()
    dataset = PerImageDataset(split, input_size=SIZE, grayscale=False, hflip=True)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    augmented = torch.stack([dataset[i][0] for i in range(len(split))]).float()
    original = split.images.float()
    per_image_change = (augmented - original).abs().mean(dim=(1, 2, 3))
    assert per_image_change.min() > 3, "some image came out unchanged"
    assert abs(augmented.mean() - original.mean()) < 15
    assert 0.85 < augmented.std() / original.std() < 1.15


@pytest.mark.parametrize("workers", [0, 2])
def test_equal_seeds_give_identical_batches(workers):
    split = smooth_split()
    first_images, first_labels = as_lists(loader(split, seed=7, workers=workers))
    second_images, second_labels = as_lists(loader(split, seed=7, workers=workers))
    assert all(torch.equal(a, b) for a, b in zip(first_images, second_images, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(first_labels, second_labels, strict=True))


def test_batches_do_not_depend_on_the_number_of_workers():
    split = smooth_split()
    in_process, _ = as_lists(loader(split, seed=7, workers=0))
    in_workers, _ = as_lists(loader(split, seed=7, workers=2))
    assert all(torch.equal(a, b) for a, b in zip(in_process, in_workers, strict=True))


def test_different_seeds_or_passes_give_different_batches():
    split = smooth_split()
    seeded = loader(split, seed=1)
    first_pass, _ = as_lists(seeded)
    second_pass, _ = as_lists(seeded)
    other_seed, _ = as_lists(loader(split, seed=2))
    assert not torch.equal(torch.cat(first_pass), torch.cat(second_pass))
    assert not torch.equal(torch.cat(first_pass), torch.cat(other_seed))


def test_caller_rng_states_are_left_alone():
    states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    list(loader(smooth_split(), seed=3))
    assert random.getstate() == states[0]
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])


@pytest.mark.parametrize(("batch_size", "sizes"), [(5, [5, 5, 5]), (16, [16]), (20, [16])])
def test_short_last_batch_is_dropped_unless_it_is_the_only_one(batch_size, sizes):
    batches = loader(smooth_split(), seed=0, batch_size=batch_size)
    assert [len(labels) for _, labels in batches] == sizes


@pytest.mark.parametrize("policy", ["autoaugment", "randaugment"])
def test_autoaugment_and_randaugment_are_timms_policies_in_the_same_loader(policy):
    from timm.data.auto_augment import AutoAugment, RandAugment

    split = smooth_split()
    dataset = PerImageDataset(split, input_size=SIZE, grayscale=False, hflip=True, policy=policy)
    kind = AutoAugment if policy == "autoaugment" else RandAugment
    assert any(isinstance(step, kind) for step in dataset.transform.transforms)
    first = [images for images, _ in loader(split, seed=3, policy=policy)]
    again = [images for images, _ in loader(split, seed=3, policy=policy)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))  # repeatable
