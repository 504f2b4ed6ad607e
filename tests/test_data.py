"""edgecls.data: every spec kind, every image kind, every problem, on tiny generated files."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgecls.data import (
    BUILTIN_DATASETS,
    IMAGE_EXTENSIONS,
    BadImageError,
    describe,
    load_dataset,
    load_image,
    to_pixels,
)
from edgecls.errors import UserError

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]
needs_debian_fashion = pytest.mark.skipif(
    not all((DEBIAN_FASHION / f).is_file() for f in FASHION_FILES),
    reason="Debian package dataset-fashion-mnist not installed",
)
COLORS = {"cat": (255, 0, 0), "dog": (0, 0, 255), "eel": (0, 255, 0)}


def write_image(path: Path, color=(255, 0, 0), size=(12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def make_class_folders(root: Path, counts: dict[str, int], ext: str = ".png") -> Path:
    for name, count in counts.items():
        for i in range(count):
            write_image(root / name / f"{name}{i}{ext}", COLORS[name])
    return root


def load(spec, **kwargs):
    kwargs.setdefault("input_size", 8)
    kwargs.setdefault("progress", False)
    return load_dataset(str(spec), **kwargs)


def check_split(split, n: int, channels: int = 3, size: int = 8) -> None:
    assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
    assert tuple(split.images.shape) == (n, channels, size, size)
    assert len(split.labels) == len(split.sources) == n


# --- spec kinds ---------------------------------------------------------------------------------


def test_train_valid_test_folders(tmp_path):
    make_class_folders(tmp_path / "train", {"dog": 3, "cat": 2}, ".jpg")
    make_class_folders(tmp_path / "valid", {"cat": 1, "dog": 1})
    make_class_folders(tmp_path / "test", {"dog": 2})
    (tmp_path / "train" / "cat" / "notes.txt").write_text("ignored")
    write_image(tmp_path / "train" / "cat" / ".hidden.png")
    ds = load(tmp_path)
    assert ds.classes == ["cat", "dog"] and ds.name == str(tmp_path)
    check_split(ds.train, 5)
    check_split(ds.val, 2)
    check_split(ds.test, 2)
    assert ds.train.labels.tolist() == [0, 0, 1, 1, 1]
    assert ds.test.labels.tolist() == [1, 1]
    assert ds.train.sources[0] == str(tmp_path / "train" / "cat" / "cat0.jpg")
    # the class colour survives decoding: cat is red, dog is blue
    assert (ds.train.images[0, :, 4, 4].int() - torch.tensor([255, 0, 0])).abs().max() < 4
    assert (ds.train.images[4, :, 4, 4].int() - torch.tensor([0, 0, 255])).abs().max() < 4
    assert not ds.fatal and not ds.skipped
    assert "no images of class(es) 'cat'" in " ".join(ds.problems)  # test/ lacks cat: a warning


def test_train_folder_without_val_splits_it_off(tmp_path):
    make_class_folders(tmp_path / "TRAIN", {"cat": 5, "dog": 5})
    ds = load(tmp_path, val_fraction=0.4)
    assert len(ds.train) == 6 and len(ds.val) == 4 and ds.test is None


def test_single_folder_split_is_stratified_and_seeded(tmp_path):
    make_class_folders(tmp_path, {"cat": 10, "dog": 20, "eel": 5})
    ds = load(tmp_path, val_fraction=0.2, seed=1, grayscale=True)
    check_split(ds.train, 28, channels=1)
    check_split(ds.val, 7, channels=1)
    assert ds.val.labels.tolist().count(0) == 2 and ds.val.labels.tolist().count(1) == 4
    assert set(ds.train.sources).isdisjoint(ds.val.sources)
    assert load(tmp_path, seed=1).val.sources == ds.val.sources
    assert load(tmp_path, seed=2).val.sources != ds.val.sources


def test_csv_list_with_relative_paths(tmp_path):
    for i in range(4):
        write_image(tmp_path / "imgs" / f"a{i}.png", COLORS["cat"])
        write_image(tmp_path / "imgs" / f"b{i}.png", COLORS["dog"])
    rows = [f"imgs/a{i}.png,cat\nimgs/b{i}.png,dog\n" for i in range(4)]
    (tmp_path / "lists").mkdir()
    list_file = tmp_path / "lists" / "all.csv"
    outside = "".join(r.replace("imgs/", "../imgs/") for r in rows)
    list_file.write_text("# edgecls: allow-outside-paths\npath,label\n" + outside)
    ds = load(list_file, val_fraction=0.5)
    assert ds.classes == ["cat", "dog"]
    assert len(ds.train) == len(ds.val) == 4
    assert sorted(ds.val.labels.tolist()) == [0, 0, 1, 1]
    assert ds.train.sources[0].startswith(str(tmp_path / "lists" / ".." / "imgs"))


def test_txt_list_whitespace_separated(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"x {i}.png", COLORS["cat"])
        write_image(tmp_path / f"y{i}.png", COLORS["dog"])
    lines = [f"x {i}.png  cat\ny{i}.png\tdog" for i in range(3)]
    (tmp_path / "list.txt").write_text("# comment\n\n" + "\n".join(lines) + "\n")
    ds = load(tmp_path / "list.txt", val_fraction=0.34)
    assert len(ds.train) + len(ds.val) == 6 and ds.classes == ["cat", "dog"]


def test_folder_of_per_split_lists(tmp_path):
    for name in ("a", "b", "c", "d", "e", "f"):
        write_image(tmp_path / "img" / f"{name}.png")
    (tmp_path / "train.csv").write_text("img/a.png,cat\nimg/b.png,dog\nimg/c.png,cat\n")
    (tmp_path / "validation.txt").write_text("img/d.png dog\nimg/e.png cat\n")
    (tmp_path / "test.csv").write_text("path,label\nimg/f.png,dog\n")
    ds = load(tmp_path)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (3, 2, 1)
    assert ds.val.labels.tolist() == [1, 0]


def test_digits_builtin():
    ds = load("Digits", input_size=16)
    assert ds.classes == [str(i) for i in range(10)] and ds.test is None
    check_split(ds.train, 1438, size=16)
    check_split(ds.val, 359, size=16)
    assert ds.train.sources[0].startswith("digits[")
    assert ds.train.images.max() == 255
    assert torch.bincount(ds.val.labels).min() >= 35  # stratified


def test_mnist5k_builtin():
    ds = load("mnist5k", input_size=28, grayscale=True)
    check_split(ds.train, 4000, channels=1, size=28)
    check_split(ds.val, 1000, channels=1, size=28)
    assert ds.train.images.max() == 255


@needs_debian_fashion
def test_fashion_mnist_from_debian_path():
    ds = load("fashion-mnist", grayscale=True)
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    check_split(ds.train, 48000, channels=1)
    check_split(ds.val, 12000, channels=1)
    check_split(ds.test, 10000, channels=1)


@needs_debian_fashion
def test_fashion_mnist_from_data_root_with_plain_idx_files(tmp_path):
    for name in FASHION_FILES:
        with gzip.open(DEBIAN_FASHION / name) as src:
            (tmp_path / name.removesuffix(".gz")).write_bytes(src.read())
    ds = load("fashion-mnist", data_root=str(tmp_path), val_fraction=0.5)
    check_split(ds.test, 10000)
    assert len(ds.train) == len(ds.val) == 30000
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        load("fashion-mnist", data_root=str(tmp_path / "nowhere"))


@needs_debian_fashion
def test_torchvision_fashionmnist_from_local_root(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FASHION_FILES:
        with gzip.open(DEBIAN_FASHION / name) as src:
            (raw / name.removesuffix(".gz")).write_bytes(src.read())
    ds = load("fashionmnist", data_root=str(tmp_path), grayscale=True)
    assert ds.classes[0] == "T-shirt/top"
    check_split(ds.test, 10000, channels=1)
    assert len(ds.train) + len(ds.val) == 60000
    assert ds.test.sources[0] == "fashionmnist:test[0]"


def test_torchvision_file_based_dataset_from_local_root(tmp_path):
    folder = tmp_path / "caltech101" / "101_ObjectCategories"
    (folder / "BACKGROUND_Google").mkdir(parents=True)  # torchvision drops this pseudo-class
    for name in ("ant", "bee"):
        for i in range(1, 6):
            write_image(
                folder / name / f"image_{i:04d}.jpg", COLORS["cat" if name == "ant" else "dog"]
            )
    ds = load("Caltech101", data_root=str(tmp_path), progress=True)
    assert ds.classes == ["ant", "bee"] and ds.test is None
    check_split(ds.train, 8)
    check_split(ds.val, 2)
    assert ds.train.sources[0] == "caltech101:train[0]"


def test_torchvision_dataset_needs_data_root(tmp_path):
    with pytest.raises(UserError, match="torchvision CIFAR10.*data_root.*download=true"):
        load("cifar10")
    with pytest.raises(UserError, match=r"cifar-10-batches-py.*download=true"):
        load("cifar10", data_root=str(tmp_path))
    assert not any(tmp_path.iterdir())
    raw = tmp_path / "FashionMNIST"
    raw.mkdir()
    with pytest.raises(UserError, match="torchvision FashionMNIST"):
        load("fashionmnist", data_root=str(tmp_path))


def test_unknown_name_lists_builtins():
    with pytest.raises(UserError, match="no such file, folder or built-in dataset 'nope'.*digits"):
        load("nope")
    assert "fashion-mnist" in BUILTIN_DATASETS and ".webp" in IMAGE_EXTENSIONS


# --- image kinds --------------------------------------------------------------------------------

RED = (255, 0, 0)
RED_AS_L = 76  # ITU-R 601-2 luma of pure red


def _rgb(path: Path) -> Path:
    Image.new("RGB", (4, 4), RED).save(path)
    return path


def _gray(path: Path) -> Path:
    Image.new("L", (4, 4), RED_AS_L).save(path)
    return path


def _rgba(path: Path) -> Path:
    Image.new("RGBA", (4, 4), (*RED, 255)).save(path)
    return path


def _la(path: Path) -> Path:
    Image.new("LA", (4, 4), (RED_AS_L, 255)).save(path)
    return path


def _palette(path: Path) -> Path:
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 255, 0, *RED] + [0] * 762)
    img.save(path, transparency=0)  # green index 0 is transparent but unused
    return path


def _cmyk_jpeg(path: Path) -> Path:
    Image.new("RGB", (8, 8), RED).convert("CMYK").save(path, quality=100)
    return path


def _tiff(path: Path) -> Path:
    Image.new("RGB", (4, 4), RED).save(path)
    return path


@pytest.mark.parametrize(
    "make, name",
    [
        (_rgb, "a.jpg"),
        (_rgb, "a.BMP"),
        (_rgb, "a.webp"),
        (_tiff, "a.tiff"),
        (_gray, "a.png"),
        (_rgba, "a.png"),
        (_la, "a.png"),
        (_palette, "a.png"),
        (_palette, "a.gif"),
        (_cmyk_jpeg, "a.jpg"),
    ],
)
def test_image_kinds_load_as_rgb_and_gray(tmp_path, make, name):
    path = make(tmp_path / name)
    rgb = load_image(path)
    assert rgb.mode == "RGB"
    expected = (RED_AS_L,) * 3 if make in (_gray, _la) else RED
    assert np.abs(np.asarray(rgb)[1, 1].astype(int) - expected).max() <= 8, make.__name__
    gray = load_image(path, grayscale=True)
    assert gray.mode == "L"
    assert abs(int(np.asarray(gray)[1, 1]) - RED_AS_L) <= 8, make.__name__


def test_transparent_pixels_become_black(tmp_path):
    img = Image.new("RGBA", (2, 1), (255, 255, 255, 0))
    img.putpixel((1, 0), (255, 255, 255, 255))
    img.save(tmp_path / "a.png")
    assert np.asarray(load_image(tmp_path / "a.png")).tolist() == [[[0, 0, 0], [255, 255, 255]]]


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    Image.fromarray(np.array([[65535, 32768, 256, 0]], dtype=np.uint16)).save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").mode.startswith("I")
    assert np.asarray(load_image(tmp_path / "a.png", grayscale=True)).tolist() == [[255, 128, 1, 0]]
    assert np.asarray(load_image(tmp_path / "a.png"))[0, :, 0].tolist() == [255, 128, 1, 0]


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((8, 16, 3), np.uint8)  # 16 wide: left half red, right half blue
    stored[:, :8] = RED
    stored[:, 8:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # viewer must rotate 90 degrees clockwise: the left half ends up on top
    Image.fromarray(stored).save(tmp_path / "a.jpg", exif=exif, quality=100)
    img = load_image(tmp_path / "a.jpg")
    assert img.size == (8, 16)
    pixels = np.asarray(img).astype(int)
    assert np.abs(pixels[2, 4] - RED).max() < 20
    assert np.abs(pixels[13, 4] - (0, 0, 255)).max() < 20
    assert load_image(tmp_path / "a.jpg", grayscale=True).size == (8, 16)


def test_to_pixels_resizes_shorter_side_then_center_crops():
    img = Image.new("RGB", (30, 10), (0, 0, 255))
    img.paste(RED, (10, 0, 20, 10))  # only the centre third is red
    pixels = to_pixels(img, 5)
    assert pixels.dtype == np.uint8 and pixels.shape == (3, 5, 5)
    assert np.unique(pixels[:, :, 1:4].reshape(3, -1), axis=1).tolist() == [[255], [0], [0]]
    assert to_pixels(Image.new("L", (3, 7)), 4).shape == (1, 4, 4)


@pytest.mark.parametrize("size", [(28, 28, 32), (300, 200, 64), (200, 301, 224), (33, 17, 16)])
def test_to_pixels_matches_torchvision_antialiased_resize_and_centre_crop(size):
    """Decoding moved from torchvision's tensor resize to PIL's (no torch to read data): the
    pixels stay those training saw before, to within one level where the image shrinks."""
    import torchvision.transforms.v2.functional as TF

    width, height, side = size
    array = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    reference = TF.center_crop(TF.resize(TF.pil_to_tensor(image), [side], antialias=True), side)
    difference = np.abs(to_pixels(image, side).astype(int) - reference.numpy().astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.05


@pytest.mark.parametrize("content", [b"", b"hello, not an image\n", "truncated"])
def test_bad_files_raise_bad_image_error(tmp_path, content):
    path = tmp_path / "bad.jpg"
    if content == "truncated":
        Image.effect_noise((64, 64), 50).convert("RGB").save(path, quality=95)
        content = path.read_bytes()[:400]
    path.write_bytes(content)
    with pytest.raises(BadImageError) as info:
        load_image(path)
    assert info.value.path == str(path) and info.value.reason


# --- problems -----------------------------------------------------------------------------------


def _with_bad_files(root: Path) -> Path:
    make_class_folders(root, {"cat": 5, "dog": 5}, ".jpg")
    Image.effect_noise((64, 64), 50).convert("RGB").save(root / "cat" / "full.jpg")
    (root / "cat" / "truncated.jpg").write_bytes((root / "cat" / "full.jpg").read_bytes()[:300])
    (root / "cat" / "full.jpg").unlink()
    (root / "dog" / "empty.png").write_bytes(b"")
    (root / "dog" / "text.jpg").write_text("not an image")
    return root


def test_bad_files_are_skipped_listed_and_folder_untouched(tmp_path, tree_digest):
    root = _with_bad_files(tmp_path / "data")
    before = tree_digest(root)
    ds = load(root, val_fraction=0.2, progress=True)
    assert tree_digest(root) == before
    assert not ds.fatal and len(ds.train) + len(ds.val) == 10
    assert sorted(Path(p).name for p, _ in ds.skipped) == ["empty.png", "text.jpg", "truncated.jpg"]
    assert all(reason for _, reason in ds.skipped)
    assert "3 unreadable or missing file(s) skipped" in " ".join(ds.problems)


def test_describe_reports_counts_balance_skipped_and_problems(tmp_path):
    root = _with_bad_files(tmp_path / "data")
    make_class_folders(root, {"eel": 1})
    text = describe(load(root, strict=False))
    assert "dataset: " in text and "3 classes" in text
    assert "train  " in text and "per class min" in text and "ratio" in text
    assert "class balance:" in text and "eel" in text
    assert "skipped files: 3" in text and "truncated.jpg" in text
    assert "error: cannot split off a validation set: class 'eel' has only 1 image" in text
    assert "NOT trainable" in text


def test_missing_path():
    with pytest.raises(UserError, match="no such file, folder or built-in dataset"):
        load("/no/such/dir")


def test_empty_dataset(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(UserError, match="no images found"):
        load(tmp_path)
    (tmp_path / "cat").mkdir()
    with pytest.raises(UserError, match="no images found"):
        load(tmp_path)


def test_class_folder_without_images(tmp_path):
    make_class_folders(tmp_path, {"cat": 3, "dog": 3})
    (tmp_path / "eel").mkdir()
    (tmp_path / "eel" / "x.txt").write_text("x")
    with pytest.raises(UserError, match="class 'eel' in .* has no readable images"):
        load(tmp_path)


def test_class_folder_with_only_unreadable_images(tmp_path):
    make_class_folders(tmp_path, {"cat": 3, "dog": 3})
    (tmp_path / "eel").mkdir()
    (tmp_path / "eel" / "x.jpg").write_bytes(b"")
    with pytest.raises(UserError, match=r"class 'eel' .* no readable images \(1 unreadable\)"):
        load(tmp_path)


@pytest.mark.parametrize("split", ["val", "test"])
def test_class_in_val_or_test_not_in_train(tmp_path, split):
    make_class_folders(tmp_path / "train", {"cat": 2, "dog": 2})
    make_class_folders(tmp_path / "val", {"cat": 1, "dog": 1})
    make_class_folders(tmp_path / split, {"eel": 1})
    with pytest.raises(UserError, match=f"'eel' in .*{split}/ are not in the training set"):
        load(tmp_path)


def test_single_class(tmp_path):
    make_class_folders(tmp_path, {"cat": 4})
    with pytest.raises(UserError, match="only one class .*'cat'.*need at least 2 classes"):
        load(tmp_path)


def test_list_row_with_missing_file_is_skipped(tmp_path):
    make_class_folders(tmp_path, {"cat": 3, "dog": 3})
    rows = [f"{c}/{c}{i}.png,{c}" for c in ("cat", "dog") for i in range(3)]
    (tmp_path / "list.csv").write_text("\n".join(rows + ["cat/gone.png,cat"]))
    ds = load(tmp_path / "list.csv", val_fraction=0.34)
    assert ds.skipped == [
        (str(tmp_path / "cat" / "gone.png"), "listed in list.csv line 7 but not found")
    ]


def test_malformed_list_row(tmp_path):
    make_class_folders(tmp_path, {"cat": 3, "dog": 3})
    (tmp_path / "list.csv").write_text("cat/cat0.png,cat\ndog/dog0.png,dog,extra\n")
    with pytest.raises(UserError, match="list.csv line 2: expected 'path,label'"):
        load(tmp_path / "list.csv")


def test_not_a_list_file(tmp_path):
    write_image(tmp_path / "a.png")
    with pytest.raises(UserError, match="not a folder or a .csv/.txt list"):
        load(tmp_path / "a.png")


def test_non_strict_lists_all_problems(tmp_path):
    make_class_folders(tmp_path / "train", {"cat": 2})
    make_class_folders(tmp_path / "val", {"cat": 1, "eel": 1})
    ds = load(tmp_path, strict=False)
    errors = [p for p in ds.problems if p.startswith("error: ")]
    assert ds.fatal and len(errors) == 2
    assert "not in the training set" in errors[0] and "only one class" in errors[1]
    assert len(ds.train) == 2 and len(ds.val) == 1  # the 'eel' image is dropped


def test_bad_arguments(tmp_path):
    with pytest.raises(UserError, match="val_fraction"):
        load(tmp_path, val_fraction=1.0)
    with pytest.raises(UserError, match="input_size"):
        load(tmp_path, input_size=0)


def test_list_rows_with_a_box_are_cropped_to_it(tmp_path):
    import numpy as np
    from PIL import Image

    from edgecls.data import load_dataset
    from edgecls.errors import UserError

    pixels = np.zeros((40, 40), dtype=np.uint8)
    pixels[:, 20:] = 255  # black left half, white right half
    rows = ["path,label,x0,y0,x1,y1"]
    for i in range(12):
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{'ab'[i % 2]},20,0,40,40")  # the white half
    (tmp_path / "boxes.csv").write_text("\n".join(rows) + "\n")
    cropped = load_dataset(str(tmp_path / "boxes.csv"), input_size=16, progress=False)
    assert (cropped.train.images == 255).all()
    whole = load_dataset(
        str(tmp_path / "boxes.csv"), input_size=16, progress=False, bbox_crop=False
    )
    assert 100 < whole.train.images.float().mean() < 155
    (tmp_path / "bad.csv").write_text("0.png,a,30,0,10,40\n1.png,b\n")
    with pytest.raises(UserError, match="x0 < x1"):
        load_dataset(str(tmp_path / "bad.csv"), input_size=16, progress=False)


def test_worker_processes_decode_as_threads_do_failures_included(tmp_path, monkeypatch):
    """Many files decode in worker processes: the same pixels, order and failures as threads."""
    import edgecls.data.decoding as decoding

    root = _with_bad_files(tmp_path / "data")
    for i in range(6):
        write_image(root / "cat" / f"grey{i}.png", (40 * i, 90, 200), size=(9 + i, 7))
    in_threads = load(root, val_fraction=0.2, cache="memory")
    monkeypatch.setattr(decoding, "PROCESS_MIN_FILES", 1)
    monkeypatch.setattr(decoding, "DECODE_CHUNK", 3)  # several tasks per worker
    in_processes = load(root, val_fraction=0.2, cache="memory")
    for name in ("train", "val"):
        threads, processes = getattr(in_threads, name), getattr(in_processes, name)
        assert processes.sources == threads.sources
        assert np.array_equal(processes.pixels, threads.pixels)
    assert sorted(in_processes.skipped) == sorted(in_threads.skipped)


@pytest.mark.parametrize("guarded", [False, True])
def test_a_script_calling_edgecls_at_its_top_level_runs_once(tmp_path, guarded):
    """Worker processes import __main__ again: an unguarded script must not run again in them
    (it decodes in threads), a guarded one decodes in processes."""
    root = make_class_folders(tmp_path / "data", {"cat": 4, "dog": 4})
    body = (
        "import edgecls.data.decoding as decoding\n"
        "from edgecls.data import load_dataset\n"
        "decoding.PROCESS_MIN_FILES = 1\n"
        "print('top level', decoding.workers_may_import_main())\n"
        f"data = load_dataset({str(root)!r}, input_size=8, progress=False, cache='memory')\n"
        "print(len(data.train) + len(data.val))\n"
    )
    if guarded:
        body = "if __name__ == '__main__':\n" + "".join(
            f"    {line}\n" for line in body.splitlines()
        )
    script = tmp_path / "script.py"
    script.write_text(body)
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"top level {guarded}", "8"]


def test_class_folders_are_listed_in_path_order_hidden_left_out(tmp_path):
    """Nested folders sort as Paths do ("a/b" before "a-b"), so splits stay as they were."""
    from edgecls.data.sources import _images_under

    for name in ("a/x.png", "a-b.png", "a0.png", ".hidden.png", ".git/y.png", "notes.txt"):
        write_image(tmp_path / name) if name.endswith(".png") else (tmp_path / name).write_text("")
    listed = [p.relative_to(tmp_path).as_posix() for p in _images_under(tmp_path)]
    assert listed == ["a/x.png", "a-b.png", "a0.png"]
