"""Every bad input: one line on stderr, exit status 2, never a traceback, the data folder untouched.

One table of cases, each run against a fresh tiny data folder (3 classes x 8 digit images of
16x16 pixels). A case names the command line (with {data}, {tmp} and {run} filled in), a setup,
the exit status it must end with (2, or 0 where the input must work), a text the message must
contain, and optionally more checks on what it left behind. Every case checks that no file or
name under the data folder changed.
"""

from __future__ import annotations

import errno
import io
import os
import resource
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageFile
from sklearn.datasets import load_digits

from edgecls.cli import main
from edgecls.config import Config, build_config, load_recipe, parse_overrides
from edgecls.data import BadImageError, load_image
from edgecls.errors import UserError
from edgecls.runs import atomic_write_bytes

# edgecls silences PIL's warning about huge images (it refuses them itself); pytest shows it anyway.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

REPO = Path(__file__).resolve().parents[1]
TRAIN = "--recipe digits --epochs 1 input_size=16 --quiet --run-dir {tmp}/run"
NOT_UTF8 = b"\xff\xfe.png"
NOT_UTF8_BROKEN = b"\xff.png"


# --- tiny data -----------------------------------------------------------------------------------


def write_digits(folder: Path, classes: int = 3, per_class: int = 8) -> Path:
    """Class folders 0, 1, 2 of 16x16 grayscale PNGs of scikit-learn's digits."""
    digits = load_digits()
    for label in range(classes):
        (folder / str(label)).mkdir(parents=True)
        for index in np.flatnonzero(digits.target == label)[:per_class]:
            pixels = (digits.images[index] * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels).resize((16, 16)).save(folder / str(label) / f"{index}.png")
    return folder


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buffer, format="PNG")
    return buffer.getvalue()


# --- setups: each gets the case's tmp folder, whose data/ holds the digits ---------------------


def corrupt_files(tmp: Path) -> None:
    data = tmp / "data"
    (data / "0" / "empty.png").write_bytes(b"")
    (data / "1" / "text.jpg").write_text("not an image")
    (data / "2" / "truncated.png").write_bytes((data / "2" / "2.png").read_bytes()[:60])


def class_of_corrupt_files(tmp: Path) -> None:
    (tmp / "data" / "3").mkdir()
    (tmp / "data" / "3" / "a.png").write_bytes(b"\x89PNG broken")
    (tmp / "data" / "3" / "b.png").write_bytes(b"")


def empty_class(tmp: Path) -> None:
    (tmp / "data" / "3").mkdir()


def single_class(tmp: Path) -> None:
    shutil.rmtree(tmp / "data" / "1")
    shutil.rmtree(tmp / "data" / "2")


def val_class_absent_from_train(tmp: Path) -> None:
    data = tmp / "data"
    (data / "train").mkdir()
    for label in ("0", "1", "2"):
        (data / label).rename(data / "train" / label)
    (data / "val" / "9").mkdir(parents=True)
    (data / "val" / "9" / "x.png").write_bytes(png_bytes())


def huge_image(tmp: Path) -> None:
    # 95 megapixels; a 1-bit PNG of one colour compresses to a few KB.
    Image.new("1", (10000, 9500)).save(tmp / "data" / "0" / "huge.png")


def undecodable_names(tmp: Path) -> None:
    folder = os.fsencode(tmp / "data" / "0")
    with open(os.path.join(folder, NOT_UTF8), "wb") as handle:
        handle.write(png_bytes())
    with open(os.path.join(folder, NOT_UTF8_BROKEN), "wb") as handle:
        handle.write(b"not an image")


def undecodable_class_folder(tmp: Path) -> None:
    folder = os.path.join(os.fsencode(tmp / "data"), b"\xffclass")
    os.mkdir(folder)
    for index in range(8):
        with open(os.path.join(folder, b"%d.png" % index), "wb") as handle:
            handle.write(png_bytes())


def undecodable_everything(tmp: Path) -> None:
    undecodable_names(tmp)
    undecodable_class_folder(tmp)


def list_file(tmp: Path, extra_rows: list[str], header: str = "") -> None:
    data = tmp / "data"
    rows = [f"{p.relative_to(data)},{p.parent.name}" for p in sorted(data.rglob("*.png"))]
    (data / "list.csv").write_text(header + "\n".join(rows + extra_rows) + "\n")
    (tmp / "outside.png").write_bytes(png_bytes())


def list_up_and_out(tmp: Path) -> None:
    list_file(tmp, ["../outside.png,0"])


def list_absolute(tmp: Path) -> None:
    list_file(tmp, [f"{tmp / 'outside.png'},1"])


def list_allows_outside(tmp: Path) -> None:
    list_file(tmp, ["../outside.png,0"], header="# edgecls: allow-outside-paths\n")


def list_with_missing_file(tmp: Path) -> None:
    list_file(tmp, ["0/gone.png,0"])


def list_with_bad_row(tmp: Path) -> None:
    list_file(tmp, ["just-a-path.png"])


def regular_file(tmp: Path) -> None:
    (tmp / "afile").write_text("a file, not a folder")


def read_only_folder(tmp: Path) -> None:
    (tmp / "locked").mkdir()
    (tmp / "locked").chmod(0o555)


def text_file(tmp: Path) -> None:
    (tmp / "note.png").write_text("not an image")


def saved_run(config_text: str) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        (tmp / "r").mkdir()
        (tmp / "r" / "config.yaml").write_text(config_text)

    return write


class CodeOnLoad:
    """A pickle that would create a file when loaded blindly."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/edgecls-test-pwned",))


def crafted_checkpoint(tmp: Path) -> None:
    torch.save({"model": CodeOnLoad(), "classes": ["0", "1"]}, tmp / "crafted.pt")


def a_folder_of_mine(tmp: Path) -> None:
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("precious")


def a_file_of_mine(tmp: Path) -> None:
    (tmp / "notes.txt").write_text("precious")


def corrupt_checkpoint(tmp: Path) -> None:
    (tmp / "corrupt.pt").write_bytes(b"\x00" * 100)


def recipe(text: str) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        (tmp / "recipe.yaml").write_text(text)

    return write


# --- checks on what a case left behind -----------------------------------------------------------


def csv_written(tmp: Path) -> None:
    assert (tmp / "new" / "sub" / "p.csv").read_text().startswith("path,label1,prob1")


def lr_parsed_as_numbers(tmp: Path) -> None:
    saved = (tmp / "run" / "config.yaml").read_text()
    assert "lr: 0.001\n" in saved and "weight_decay: 0.0005\n" in saved


def undecodable_names_listed(tmp: Path) -> None:
    skipped = (tmp / "run" / "skipped_files.txt").read_bytes().decode("utf-8")
    assert "\\xff.png" in skipped


def no_temporary_files(tmp: Path) -> None:
    assert not [p.name for p in (tmp / "run").iterdir() if p.name.endswith(".tmp")]


def nothing_created(tmp: Path) -> None:
    assert not (tmp / "run").exists()


@dataclass
class Case:
    id: str
    args: str
    status: int
    contains: str
    setup: Callable[[Path], None] | None = None
    then: Callable[[Path], None] | None = None
    file_size_limit: int | None = None  # run in a subprocess whose files cannot grow beyond this


def configured(key_value: str, contains: str | None = None) -> Case:
    """A config value out of its range: refused before any data is read."""
    key = key_value.partition("=")[0]
    return Case(key_value, f"train {{data}} {TRAIN} {key_value}", 2, contains or f"'{key}'")


CASES = [
    # config value ranges
    configured("dropout=2"),
    configured("momentum=-1"),
    configured("lr_search_trials=0"),
    configured("seed=-1"),
    configured("seed=100000000000000000000", contains="4294967295"),
    configured("sam_rho=-1"),
    configured("patience=-3"),
    configured("weight_decay=-1"),
    configured("lr_factor=1.5"),
    configured("min_lr_ratio=0"),
    configured("forced_decay_at=2"),
    configured("warmup_epochs=-1"),
    configured("workers=-1"),
    configured("am_margin=-1"),
    configured("bias_lr_factor=0"),
    configured("lr_search_epochs=0"),
    configured("lr_search_step=0"),
    configured("input_size=100000"),
    configured("batch_size=0"),
    configured("val_fraction=1.5"),
    configured("lr=-1"),
    configured("lr_search_range=[0.1,0.01]"),
    configured("export=tensorrt"),
    Case("seed option", "train {data} --seed -1 " + TRAIN, 2, "--seed"),
    Case("epochs option", "train {data} --epochs 0 --quiet", 2, "--epochs"),
    Case(
        "recipe value",
        "train {data} --recipe {tmp}/recipe.yaml --quiet",
        2,
        "'dropout'",
        recipe("dropout: 3\n"),
    ),
    # scientific notation
    Case(
        "scientific notation",
        "train {data} lr=1e-3 weight_decay=5e-4 " + TRAIN,
        0,
        "best epoch",
        then=lr_parsed_as_numbers,
    ),
    Case("scientific notation out of range", "train {data} weight_decay=5e2", 2, "500"),
    # a device this machine lacks
    pytest.param(
        Case(
            "cuda without a GPU",
            "train {data} device=cuda " + TRAIN,
            2,
            "cuda",
            then=nothing_created,
        ),
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
    ),
    # predict and bench options
    Case("predict top-k -1", "predict {run} {data} --top-k -1", 2, "--top-k"),
    Case("predict top-k 0", "predict {run} {data} --top-k 0", 2, "--top-k"),
    Case(
        "predict csv in a new folder",
        "predict {run} {data}/0 --csv {tmp}/new/sub/p.csv",
        0,
        "wrote",
        then=csv_written,
    ),
    Case(
        "predict a non-image", "predict {run} {tmp}/note.png", 2, "not a readable image", text_file
    ),
    Case("predict a missing file", "predict {run} {tmp}/none.png", 2, "no such file"),
    Case(
        "predict corrupt checkpoint",
        "predict {tmp}/corrupt.pt {data}",
        2,
        "cannot read checkpoint",
        corrupt_checkpoint,
    ),
    Case("bench repeats 0", "bench mobilenetv3_small_050 --repeats 0", 2, "--repeats"),
    Case(
        "bench int8 on torch",
        "bench mobilenetv3_small_050 --backends torch --precision int8",
        2,
        "int8 runs on onnxruntime or openvino",
    ),
    Case("bench unknown backend", "bench mobilenetv3_small_050 --backends tflite", 2, "tflite"),
    Case("bench unknown precision", "bench mobilenetv3_small_050 --precision fp8", 2, "fp8"),
    # a mistyped option
    Case("unknown option", "train {data} --epoch 5", 2, "no such option: --epoch"),
    Case("unknown option hint", "train {data} --epoch 5", 2, "--epochs"),
    Case("unknown lr-find option", "lr-find {data} --metod tpe", 2, "no such option: --metod"),
    # huge images
    Case("huge image", "check-data {data}", 0, "10000x9500", huge_image),
    # undecodable file names
    Case("undecodable names, check-data", "check-data {data}", 0, "\\xff.png", undecodable_names),
    Case(
        "undecodable class folder, check-data",
        "check-data {data}",
        0,
        "\\xffclass",
        undecodable_class_folder,
    ),
    Case(
        "undecodable names, train",
        "train {data} " + TRAIN,
        0,
        "skipped files",
        undecodable_everything,
        then=undecodable_names_listed,
    ),
    # lists that point outside their folder
    Case(
        "list with ../",
        "check-data {data}/list.csv",
        0,
        "outside the list's folder",
        list_up_and_out,
    ),
    Case(
        "list with an absolute path",
        "check-data {data}/list.csv",
        0,
        "outside the list's folder",
        list_absolute,
    ),
    Case(
        "list allowing outside paths",
        "check-data {data}/list.csv",
        0,
        "skipped files: 0",
        list_allows_outside,
    ),
    Case(
        "list with a missing file",
        "check-data {data}/list.csv",
        0,
        "not found",
        list_with_missing_file,
    ),
    Case(
        "list with a bad row",
        "train {data}/list.csv --quiet",
        2,
        "expected 'path,label'",
        list_with_bad_row,
    ),
    # disk full while writing a checkpoint
    Case(
        "disk full",
        "train {data} " + TRAIN,
        2,
        "no space left writing",
        then=no_temporary_files,
        file_size_limit=2_000_000,
    ),
    # a run folder that cannot be made
    Case(
        "run dir under a file",
        "train {data} --recipe digits --quiet --run-dir {tmp}/afile/run",
        2,
        "afile",
        regular_file,
    ),
    Case(
        "run dir is a file",
        "train {data} --recipe digits --quiet --overwrite --run-dir {tmp}/afile",
        2,
        "afile",
        regular_file,
    ),
    Case(
        "lr-find out under a file",
        "lr-find {data} --recipe digits input_size=16 --out {tmp}/afile/x",
        2,
        "afile",
        regular_file,
    ),
    pytest.param(
        Case(
            "run dir read-only",
            "train {data} --recipe digits --quiet --run-dir {tmp}/locked/run",
            2,
            "locked",
            read_only_folder,
        ),
        marks=pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders"),
    ),
    # an Optuna storage that cannot be opened
    Case(
        "storage unreachable",
        "train {data} lr=tpe lr_search_storage=postgresql://nobody@127.0.0.1:1/x " + TRAIN,
        2,
        "lr_search_storage",
    ),
    Case(
        "storage not a URL",
        "train {data} lr=tpe lr_search_storage=notaurl " + TRAIN,
        2,
        "lr_search_storage",
    ),
    # paths, names, recipes, models and data that cannot be used
    Case("missing path", "train {tmp}/nowhere --quiet", 2, "nowhere"),
    Case("unknown built-in", "train imagenet-tiny --quiet", 2, "imagenet-tiny"),
    Case("unknown config key", "train {data} learning_rat=0.1", 2, "unknown config key"),
    Case("did you mean", "train {data} max_epoch=3", 2, "max_epochs"),
    Case("bad value type", "train {data} max_epochs=2.5", 2, "'max_epochs'"),
    Case("not a number or method", "train {data} lr=fast", 2, "'lr'"),
    Case("unknown choice", "train {data} schedule=linear", 2, "'schedule'"),
    Case("no value", "train {data} =3", 2, "key=value"),
    Case("two data arguments", "train {data} {data}", 2, "at most one DATA"),
    Case("unknown recipe", "train --recipe nosuch", 2, "unknown recipe"),
    Case(
        "recipe not YAML",
        "train --recipe {tmp}/recipe.yaml",
        2,
        "not valid YAML",
        recipe("lr: [\n"),
    ),
    Case(
        "recipe not a mapping",
        "train --recipe {tmp}/recipe.yaml",
        2,
        "mapping",
        recipe("- a\n- b\n"),
    ),
    Case(
        "unknown timm model",
        "train {data} --model mobilenetv9_huge " + TRAIN,
        2,
        "unknown timm model",
        then=nothing_created,
    ),
    Case(
        "missing weights",
        "train {data} --weights {tmp}/none.pth " + TRAIN,
        2,
        "weights file not found",
        then=nothing_created,
    ),
    Case("resume nothing", "train --resume {tmp}", 2, "nothing to resume"),
    Case("resume, empty config.yaml", "train --resume {tmp}/r", 2, "empty", saved_run("")),
    Case(
        "resume, invalid config.yaml",
        "train --resume {tmp}/r",
        2,
        "not valid YAML",
        saved_run("model: [unclosed\n"),
    ),
    Case(
        "resume changing the model",
        "train --resume {tmp}/r model=resnet18",
        2,
        "cannot change model",
        saved_run("data: digits\nmodel: mobilenetv3_small_100\n"),
    ),
    Case(
        "resume with an LR search",
        "train --resume {tmp}/r lr=tpe",
        2,
        "takes a number for lr",
        saved_run("data: digits\nmodel: mobilenetv3_small_100\n"),
    ),
    Case(
        "checkpoint that runs code",
        "eval {tmp}/crafted.pt {data}",
        2,
        "refusing to load",
        crafted_checkpoint,
        then=lambda tmp: not Path("/tmp/edgecls-test-pwned").exists() or pytest.fail("ran"),
    ),
    Case(
        "overwrite a folder that is no run",
        "train {data} --recipe digits --quiet --overwrite --run-dir {tmp}/mine",
        2,
        "refusing to empty",
        a_folder_of_mine,
        then=lambda tmp: (tmp / "mine" / "notes.txt").read_text() == "precious" or pytest.fail(),
    ),
    Case(
        "storage password never shown",
        "train {data} lr=tpe lr_search_storage=postgresql://bob:s3cret@127.0.0.1:1/x " + TRAIN,
        2,
        "postgresql://bob:***@127.0.0.1:1/x",
    ),
    Case(
        "ablate into a file",
        "ablate {data} --recipe digits --stack mixup --out {tmp}/notes.txt",
        2,
        "not a folder",
        a_file_of_mine,
        then=lambda tmp: (tmp / "notes.txt").read_text() == "precious" or pytest.fail(),
    ),
    Case(
        "export check data that does not exist",
        "export {run} --format onnx --out {tmp}/out --data {tmp}/no-such-dir",
        2,
        "could not be loaded",
    ),
    Case("time_budget not a duration", "train {data} time_budget=soon", 2, "time_budget"),
    Case("time_budget too small", "train {data} time_budget=1s --quiet", 2, "too small"),
    Case("corrupt images listed", "check-data {data}", 0, "truncated.png", corrupt_files),
    Case(
        "class of corrupt images",
        "train {data} " + TRAIN,
        2,
        "no readable images",
        class_of_corrupt_files,
    ),
    Case("empty class", "train {data} " + TRAIN, 2, "'3'", empty_class),
    Case("single class", "train {data} " + TRAIN, 2, "at least 2 classes", single_class),
    Case(
        "val class absent from train",
        "train {data} " + TRAIN,
        2,
        "not in the training set",
        val_class_absent_from_train,
    ),
    Case(
        "empty folder",
        "train {tmp}/empty --quiet",
        2,
        "no images",
        lambda tmp: (tmp / "empty").mkdir(),
    ),
    Case("not a list file", "train {tmp}/note.png --quiet", 2, "not a folder", text_file),
    Case("check-data input size", "check-data {data} --input-size 0", 2, "--input-size"),
    Case("check-data val fraction", "check-data {data} --val-fraction 2", 2, "--val-fraction"),
    Case("eval bad split", "eval {run} {data} --split nope", 2, "--split"),
    Case("eval absent split", "eval {run} {data} --split test", 2, "no 'test' split"),
    Case("eval missing checkpoint", "eval {tmp}/none.pt {data}", 2, "no checkpoint"),
    Case("eval missing data", "eval {run} {tmp}/nowhere", 2, "nowhere"),
    Case("export unknown format", "export {run} --format tensorrt", 2, "unknown export format"),
    Case("export onnx fp16", "export {run} --format onnx --precision fp16", 2, "has no fp16"),
    Case("export missing checkpoint", "export {tmp}/none.pt --format onnx", 2, "no checkpoint"),
]


def _case_id(case) -> str:
    return (case.values[0] if hasattr(case, "values") else case).id


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One tiny trained run (1 epoch) for the cases that need a checkpoint."""
    tmp = tmp_path_factory.mktemp("trained")
    args = f"train {write_digits(tmp / 'data')} {TRAIN.format(tmp=tmp)}"
    result = CliRunner().invoke(main, shlex.split(args))
    assert result.exit_code == 0, result.output
    return tmp / "run"


def invoke(args: list[str], file_size_limit: int | None) -> tuple[int, str, str]:
    """(status, stdout, stderr) of `edgecls ARGS`, in-process unless files must be limited."""
    if file_size_limit is None:
        result = CliRunner().invoke(main, args)
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output
        return result.exit_code, result.stdout, result.stderr

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "edgecls", *args],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=limit_file_size,
        timeout=300,
    )
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_bad_input(case: Case, tmp_path, monkeypatch, request, tree_digest):
    monkeypatch.chdir(tmp_path)  # anything written by default (runs/) stays in the test's folder
    data = write_digits(tmp_path / "data")
    if case.setup:
        case.setup(tmp_path)
    before = tree_digest(data)
    run = request.getfixturevalue("run") if "{run}" in case.args else None
    args = [part.format(data=data, tmp=tmp_path, run=run) for part in shlex.split(case.args)]

    status, stdout, stderr = invoke(args, case.file_size_limit)

    assert status == case.status, stdout + stderr
    assert "Traceback" not in stdout + stderr
    if case.status == 2:
        # The run folder's name is printed when it is made; the failure is the one line after it.
        lines = [
            line
            for line in stderr.splitlines()
            if line.strip() and not line.startswith("run folder: ")
        ]
        assert len(lines) == 1 and not stdout, stdout + stderr
        assert case.contains in lines[0]
    else:
        assert case.contains in stdout + stderr
    assert tree_digest(data) == before, "the data folder changed"
    if case.then:
        case.then(tmp_path)


def test_there_are_enough_cases():
    assert len(CASES) >= 40


# --- the same rules, one level down --------------------------------------------------------------


def test_every_config_key_is_declared_with_its_help():
    from edgecls.config import describe_keys

    keys = describe_keys()
    assert [k.name for k in keys] == list(Config.__dataclass_fields__)
    assert all(k.help and k.allowed for k in keys), [k.name for k in keys if not k.help]


def test_range_message_names_key_range_and_value():
    with pytest.raises(UserError) as info:
        build_config({"dropout": 2})
    assert str(info.value) == "config key 'dropout' must be 0 <= dropout < 1, got 2.0"


def test_defaults_are_within_range():
    build_config()


def test_scientific_notation_in_overrides_and_recipes(tmp_path):
    assert parse_overrides(["lr=1e-3", "weight_decay=5E-4", "seed=1e3"]) == {
        "lr": 0.001,
        "weight_decay": 0.0005,
        "seed": 1000.0,  # a float, so the integer key refuses it
    }
    path = tmp_path / "r.yaml"
    path.write_text("lr: 1e-3\nweight_decay: 5e-4\nlr_search_range: [1e-3, 1e-2]\n")
    config = build_config(load_recipe(str(path)))
    assert (config.lr, config.weight_decay) == (0.001, 0.0005)
    assert config.lr_search_range == [0.001, 0.01]
    assert build_config(parse_overrides(["lr=tpe"])).lr == "tpe"


def test_off_is_a_word_for_choice_keys_and_false_for_switches(tmp_path):
    """YAML 1.1 reads off/on/yes/no as booleans: audit=off was refused as audit=False."""
    config = build_config(parse_overrides(["audit=off", "hflip=off", "sam=yes", "tta=true"]))
    assert (config.audit, config.hflip, config.sam, config.tta) == ("off", False, True, True)
    path = tmp_path / "r.yaml"
    path.write_text("audit: off\nhflip: no\n")
    assert build_config(load_recipe(str(path))).audit == "off"
    with pytest.raises(UserError, match="hflip"):
        build_config(parse_overrides(["hflip=maybe"]))


def test_huge_image_is_refused_from_its_header(tmp_path, monkeypatch):
    (tmp_path / "data" / "0").mkdir(parents=True)
    huge_image(tmp_path)

    def no_decoding(self):
        raise AssertionError("decoded a huge image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(BadImageError, match="10000x9500"):
        load_image(tmp_path / "data" / "0" / "huge.png")


def test_disk_full_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"good")

    def fill_the_disk(tmp: str) -> None:
        Path(tmp).write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(UserError, match="no space left writing"):
        atomic_write_bytes(path, fill_the_disk)
    assert path.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
