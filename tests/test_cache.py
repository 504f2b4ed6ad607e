"""The disk image cache: decoded once per fingerprint, reused, invalidated by a changed file,
resumed after an interrupted build, and giving the same batches as memory."""

import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import edgecls.data.cache as cache_module
import edgecls.data.loader as loader
from edgecls.cli import main
from edgecls.config import Config
from edgecls.data import load_dataset
from edgecls.data.cache import choose_cache, map_of
from edgecls.training.augment import training_batches


@pytest.fixture
def folder(tmp_path):
    """60 colour images in 3 classes, one of them unreadable, no val/ (split off at load)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for c in range(3):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(20):
            pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
            pixels[..., c] = 255
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    (root / "class0" / "broken.png").write_bytes(b"not an image")
    return root


@pytest.fixture
def decodes(monkeypatch):
    """How many files were decoded since the fixture was made."""
    calls = []
    real = loader.decode_file

    def counting(file, **kwargs):
        calls.append(file)
        return real(file, **kwargs)

    monkeypatch.setattr(loader, "decode_file", counting)
    return calls


def load(folder, cache, cache_dir):
    return load_dataset(
        str(folder), input_size=16, progress=False, cache=cache, cache_dir=str(cache_dir)
    )


def same_splits(a, b):
    for name in ("train", "val"):
        left, right = getattr(a, name), getattr(b, name)
        assert torch.equal(left.images, right.images), name
        assert torch.equal(left.labels, right.labels) and left.sources == right.sources


def test_a_disk_cache_holds_what_memory_holds_and_is_reused_without_decoding(
    folder, tmp_path, decodes
):
    memory = load(folder, "memory", tmp_path / "cache")
    assert memory.storage == "memory" and not (tmp_path / "cache").exists()
    decodes.clear()
    disk = load(folder, "disk", tmp_path / "cache")
    assert len(decodes) == 61 and disk.storage.startswith("disk cache ")
    assert map_of(disk.train.images) is not None and map_of(disk.val.images) is not None
    same_splits(memory, disk)
    assert disk.skipped == memory.skipped and len(disk.skipped) == 1

    decodes.clear()
    again = load(folder, "disk", tmp_path / "cache")
    assert [f.name for f in decodes] == ["broken.png"]  # only to say again why it was skipped
    same_splits(memory, again)
    assert len(list((tmp_path / "cache").iterdir())) == 1  # one fingerprint


def test_a_changed_file_or_input_size_gives_a_new_cache(folder, tmp_path, decodes):
    first = load(folder, "disk", tmp_path / "cache")
    image = folder / "class1" / "3.png"
    Image.fromarray(np.zeros((24, 24, 3), dtype=np.uint8)).save(image)
    os.utime(image, ns=(1, 1))  # a new modification time, whatever the clock's resolution
    decodes.clear()
    second = load(folder, "disk", tmp_path / "cache")
    assert len(decodes) == 61
    (split,) = [s for s in (second.train, second.val) if str(image) in s.sources]
    assert split.images[split.sources.index(str(image))].max() == 0
    (before,) = [s for s in (first.train, first.val) if str(image) in s.sources]
    assert before.images[before.sources.index(str(image))].max() == 255
    load_dataset(
        str(folder), input_size=8, progress=False, cache="disk", cache_dir=str(tmp_path / "cache")
    )
    assert len(list((tmp_path / "cache").iterdir())) == 3


def test_an_interrupted_build_resumes_where_it_stopped(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "CHUNK", 10)
    real, calls = loader.decode_file, []

    def dies_after_35(file, **kwargs):
        calls.append(file)
        if len(calls) > 35:
            raise KeyboardInterrupt
        return real(file, **kwargs)

    monkeypatch.setattr(loader, "decode_file", dies_after_35)
    with pytest.raises(KeyboardInterrupt):
        load(folder, "disk", tmp_path / "cache")
    (built,) = (tmp_path / "cache").iterdir()
    assert not (built / "complete.json").exists()
    done = int((np.fromfile(built / "status.u8", dtype=np.uint8) != 0).sum())
    assert done in (30, 31)  # whole commits of 10 decoded images (and the broken file, if seen)

    resumed_calls = []
    monkeypatch.setattr(
        loader, "decode_file", lambda file, **kw: resumed_calls.append(file) or real(file, **kw)
    )
    resumed = load(folder, "disk", tmp_path / "cache")
    assert len(resumed_calls) == 61 - done + 1  # the rest, and the broken file for its reason
    same_splits(load(folder, "memory", tmp_path / "unused"), resumed)


def test_training_batches_from_disk_equal_those_from_memory(folder, tmp_path):
    memory = load(folder, "memory", tmp_path / "cache")
    disk = load(folder, "disk", tmp_path / "cache")
    config = Config(input_size=16, batch_size=8, augment="basic")
    batches = [
        list(
            training_batches(d.train, config, torch.Generator().manual_seed(3), torch.device("cpu"))
        )
        for d in (memory, disk)
    ]
    assert len(batches[0]) == len(batches[1]) == len(memory.train) // 8
    for (a, la), (b, lb) in zip(*batches, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_auto_keeps_small_data_in_memory_and_large_on_disk():
    assert choose_cache("auto", 1000, 3, 32) == "memory"
    assert choose_cache("auto", 10**9, 3, 224) == "disk"  # 150 TB
    assert choose_cache("memory", 10**9, 3, 224) == "memory"


def test_a_run_on_the_disk_cache_trains_resumes_and_says_where_its_images_are(folder, tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    settings = ["model=resnet20_cifar", "input_size=16", "max_epochs=2", "lr=0.05", "cache=disk"]
    common = ["--quiet", "workers=0", f"cache_dir={cache}"]
    command = ["train", str(folder), "--run-dir", str(run), *common, *settings]
    train = CliRunner().invoke(main, command)
    assert train.exit_code == 0, train.output
    assert f"images: disk cache {cache}" in train.stderr
    assert (run / "best.pt").is_file()
    resumed = CliRunner().invoke(main, ["train", "--resume", str(run), "max_epochs=3", "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert len((run / "history.csv").read_text().splitlines()) == 1 + 3
    assert "decoding" not in resumed.stderr  # the cache built by the first run
    bad = CliRunner().invoke(
        main, ["train", str(folder), "--run-dir", str(tmp_path / "run2"), "cache=disk",
               "cache_dir=/proc/no", "--quiet"],
    )  # fmt: skip
    assert bad.exit_code == 2 and "cache_dir=FOLDER" in bad.output
    assert "Traceback" not in bad.output


def resident_bytes_of(path) -> int:
    """This process's resident pages of the mapping of `path` (its Rss in /proc/self/smaps): the
    process's whole RSS also counts the heap and code pages the first inference loads."""
    resident, inside = 0, False
    for line in open("/proc/self/smaps"):
        if "-" in line.split(" ", 1)[0]:  # a mapping's header line
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            resident += int(line.split()[1]) * 1024
    return resident


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs /proc/self/smaps")
def test_evaluating_a_slice_of_the_disk_cache_does_not_keep_its_pages(tmp_path, monkeypatch):
    from edgecls.evaluate.inference import predict_logits

    monkeypatch.setattr(cache_module, "RELEASE_BYTES", 8 * 2**20)
    path = tmp_path / "images.u8"
    images = cache_module.open_map(path, (24_000, 1, 64, 64), create=True)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64 * 64, 2))
    cache_module.release_pages()
    predict_logits(model, torch.from_numpy(images[:]), batch_size=500, channels_last=False)
    resident = resident_bytes_of(path)
    assert resident < 16 * 2**20, f"{resident / 2**20:.0f} MB of a 94 MB map stayed resident"


@pytest.mark.skipif(cache_module.mapped_resident_bytes() is None, reason="needs /proc/self/statm")
def test_shuffled_reads_keep_at_most_the_release_size_of_a_map_resident(tmp_path, monkeypatch):
    """The kernel maps the neighbours of each faulted page too: counting the bytes read let 3.7
    bytes stay resident per byte read of shuffled 30 KB rows; the release is by what is mapped."""
    monkeypatch.setattr(cache_module, "RELEASE_BYTES", 8 * 2**20)
    rows, shape = 1500, (3, 100, 100)
    images = cache_module.open_map(tmp_path / "images.u8", (rows, *shape), create=True)
    for start in range(0, rows, 250):  # written first, as a build leaves it: in the page cache
        images[start : start + 250] = 7
    cache_module.release_pages()
    before, peak = cache_module.mapped_resident_bytes(), 0
    generator = torch.Generator().manual_seed(0)
    for _ in range(100):  # 96 MB read, twice the map
        batch = images[torch.randint(0, rows, (32,), generator=generator)]
        cache_module.note_read(batch, images)
        peak = max(peak, cache_module.mapped_resident_bytes() - before)
    assert peak < 10 * 2**20, f"{peak / 2**20:.1f} MB resident with 8 MB between releases"


# --- reliability of the disk cache ----------------------------------------------------------------


def test_an_edited_image_with_its_size_and_time_kept_gives_a_new_fingerprint(tmp_path):
    image = tmp_path / "a.bmp"  # BMP: the same size in bytes for any pixels of one shape
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(image)
    stat = image.stat()
    before = cache_module.fingerprint([image], 16, False)
    Image.fromarray(np.full((40, 40, 3), 9, dtype=np.uint8)).save(image)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert image.stat().st_size == stat.st_size and image.stat().st_mtime_ns == stat.st_mtime_ns
    assert cache_module.fingerprint([image], 16, False) != before


def test_a_file_unreadable_once_is_decoded_when_it_reads_again(folder, tmp_path, monkeypatch):
    flaky = folder / "class2" / "5.png"
    real = loader.decode_file

    def fails_on_flaky(file, **kwargs):
        if file == flaky:
            return loader.BadImageError(file, "temporarily unreadable")
        return real(file, **kwargs)

    monkeypatch.setattr(loader, "decode_file", fails_on_flaky)
    first = load(folder, "disk", tmp_path / "cache")
    assert str(flaky) in [path for path, _ in first.skipped]
    monkeypatch.setattr(loader, "decode_file", real)
    again = load(folder, "disk", tmp_path / "cache")
    (split,) = [s for s in (again.train, again.val) if str(flaky) in s.sources]
    row = split.images[split.sources.index(str(flaky))]
    assert row[2].min() == 255, "the row holds the image, not the zeros of its failed read"


def test_a_map_larger_than_the_free_space_is_refused_before_it_is_written(tmp_path):
    import psutil

    free = psutil.disk_usage(str(tmp_path)).free
    with pytest.raises(cache_module.UserError, match="needs .* GB more .* cache=memory"):
        cache_module.open_map(tmp_path / "images.u8", (free + 2**30,), create=True)
    assert not (tmp_path / "images.u8").exists() or (tmp_path / "images.u8").stat().st_size == 0


def test_the_space_check_counts_the_subsets_too(folder, tmp_path, monkeypatch):
    import psutil

    real = psutil.disk_usage
    images_bytes = 61 * 3 * 16 * 16
    room = images_bytes + images_bytes // 2  # the images fit; their train/val copies would not
    monkeypatch.setattr(
        psutil, "disk_usage", lambda path: real(path)._replace(free=room)
    )  # fmt: skip
    with pytest.raises(cache_module.UserError, match="needs"):
        load(folder, "disk", tmp_path / "cache")


def test_auto_decodes_small_data_into_memory_once_and_a_second_load_maps_it(
    folder, tmp_path, decodes
):
    first = load(folder, "auto", tmp_path / "cache")
    assert first.storage == "memory" and len(decodes) == 61
    decodes.clear()
    second = load(folder, "auto", tmp_path / "cache")
    assert second.storage.startswith("disk cache ") and map_of(second.train.images) is not None
    assert decodes == [folder / "class0" / "broken.png"]  # only the unreadable file, again
    same_splits(first, second)
    assert second.skipped == first.skipped


def test_a_second_process_waits_for_a_subset_being_written(tmp_path):
    import subprocess
    import sys
    import time

    folder = tmp_path / "entry"
    folder.mkdir()
    images = cache_module.open_map(folder / "images.u8", (40, 1, 8, 8), create=True)
    images[:] = np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1)
    cache_module.flush(images)
    rows = [3, 1, 4, 15, 9, 26]
    script = (
        "import sys, torch; from pathlib import Path; import edgecls.data.cache as c\n"
        f"folder = Path({str(folder)!r})\n"
        "images = c.open_map(folder / 'images.u8', (40, 1, 8, 8))\n"
        f"subset = c.take_rows(images, {rows}, folder)\n"
        "print(subset[:, 0, 0, 0].tolist())\n"
    )
    with cache_module._locked(folder):  # as a process writing the subset holds it
        other = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        time.sleep(3)
        assert other.poll() is None, "the second process did not wait for the lock"
    output, _ = other.communicate(timeout=60)
    assert other.returncode == 0 and output.strip() == str(rows)
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith("rows-"))[0].endswith(".u8")


def test_the_cache_lists_its_entries_and_removes_only_what_it_wrote(folder, tmp_path):
    load(folder, "disk", tmp_path / "cache")
    load_dataset(
        str(folder), input_size=8, progress=False, cache="disk", cache_dir=str(tmp_path / "cache")
    )
    mine = tmp_path / "cache" / "notes"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    entries = cache_module.list_cache(tmp_path / "cache")
    assert len(entries) == 2 and all(e.images == 61 and e.bytes > 0 for e in entries)
    assert entries[0].last_used <= entries[1].last_used
    assert all(cache_module.remove_entry(entry) for entry in entries)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["notes"]
    assert (mine / "keep.txt").read_text() == "mine"


def test_processes_of_one_machine_share_the_memory_that_auto_allows(monkeypatch):
    import psutil

    available = psutil.virtual_memory().available
    count = int(0.3 * available) // (3 * 16 * 16)  # 30% of the free memory, under the 40% share
    assert choose_cache("auto", count, 3, 16) == "memory"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two ranks: 60% in all
    assert choose_cache("auto", count, 3, 16) == "disk"


def test_edgecls_cache_lists_and_cleans(folder, tmp_path):
    load(folder, "disk", tmp_path / "cache")
    listed = CliRunner().invoke(main, ["cache", "--dir", str(tmp_path / "cache")])
    assert listed.exit_code == 0 and "1 entries" in listed.output
    kept = CliRunner().invoke(
        main, ["cache", "--dir", str(tmp_path / "cache"), "--clean", "--older-than", "30"]
    )
    assert "removed 0" in kept.output and len(list((tmp_path / "cache").iterdir())) == 1
    cleaned = CliRunner().invoke(main, ["cache", "--dir", str(tmp_path / "cache"), "--clean"])
    assert cleaned.exit_code == 0 and "removed 1" in cleaned.output
    assert not list((tmp_path / "cache").iterdir())
