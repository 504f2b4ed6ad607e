"""Shared by the test files: small folders of real digit images, one trained digits run (once per
session) and one tracked run (once per worker), and a digest of a folder's names and contents."""

import atexit
import hashlib
import os
import shutil
import tempfile

# One thread per test process and per process it starts: the tiny models here spend more time
# synchronising threads than computing.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Runs on data that fits in memory keep what they decoded in the image cache for the next run:
# the suite's go to a folder of its own, not the user's cache, removed by the process that made
# it (pytest-xdist's workers inherit the variable and share the folder).
if "EDGECLS_CACHE_DIR" not in os.environ:
    os.environ["EDGECLS_CACHE_DIR"] = tempfile.mkdtemp(prefix="edgecls-test-cache-")
    atexit.register(shutil.rmtree, os.environ["EDGECLS_CACHE_DIR"], ignore_errors=True)

import numpy as np
import pytest
from filelock import FileLock
from PIL import Image
from sklearn.datasets import load_digits


@pytest.fixture(scope="session")
def tree_digest():
    """A digest of a folder: every name (as bytes, so undecodable ones count too) and every
    file's content; equal before and after means the user's data was left as it was."""

    def digest_of(root) -> str:
        digest = hashlib.sha256()
        for folder, dirs, files in os.walk(os.fsencode(root)):
            dirs.sort()
            for name in sorted(dirs + files):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, os.fsencode(root)) + b"\0")
                if name in files:
                    with open(path, "rb") as handle:
                        digest.update(handle.read())
        return digest.hexdigest()

    return digest_of


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


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory, worker_id):
    """The digits recipe trained for 10 epochs on the embedded digits (well above chance) and
    exported to ONNX and OpenVINO at the end: read by the end-to-end, deployment and robustness
    tests. Tests write their outputs elsewhere or into new subfolders of it. Trained once per
    session: the first pytest-xdist worker to need it trains it under a lock, and each worker
    gets its own copy to write into."""
    if worker_id == "master":  # no xdist: one process, one run
        return _train_digits(tmp_path_factory.mktemp("digits") / "run")
    shared = tmp_path_factory.getbasetemp().parent  # this session's, common to its workers
    trained = shared / "digits_run"
    with FileLock(shared / "digits_run.lock"):
        if not (trained / "metrics.json").is_file():
            shutil.rmtree(trained, ignore_errors=True)  # a worker that failed halfway
            _train_digits(trained)
    copy = tmp_path_factory.mktemp("digits") / "run"
    shutil.copytree(trained, copy)
    return copy


def _train_digits(run):
    from click.testing import CliRunner

    from edgecls.cli import main

    arguments = ["train", "--recipe", "digits", "--quiet", "--epochs", "10", "--run-dir", str(run)]
    result = CliRunner().invoke(main, [*arguments, "export=onnx,openvino"])
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture(scope="session")
def tracked_run(tmp_path_factory):
    """One tiny digits run through the Python API with TensorBoard, MLflow (./mlruns of its
    folder) and an ONNX export: read by the tracking and comparison tests."""
    pytest.importorskip("tensorboard", reason="the tracking extra is not installed")
    pytest.importorskip("mlflow", reason="the tracking extra is not installed")
    import edgecls

    folder = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        run = edgecls.train(
            "digits",
            recipe="digits",
            run_dir=folder / "run",
            progress=False,
            tensorboard=True,
            mlflow=True,
            export="onnx",
            input_size=16,
            max_epochs=3,
            workers=0,
        )
    return run, folder
