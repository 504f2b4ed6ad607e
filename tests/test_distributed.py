"""Training in several processes: shards of each batch, the same update as one process, one run
folder, a dying rank that leaves the last checkpoint intact, resume."""

import csv
import json
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from edgecls.cli import main
from edgecls.config import build_config, load_recipe
from edgecls.data.sampling import Shard
from edgecls.runs import load_checkpoint
from edgecls.training.augment import index_batches, num_batches
from edgecls.training.loop import create_models, seed_everything


@pytest.mark.parametrize("n", [10, 64, 100, 257])
def test_the_shards_of_a_batch_together_are_the_batch_one_process_trains(n):
    single = list(index_batches(n, 32, torch.Generator().manual_seed(4)))
    shards = [
        list(index_batches(n, 16, torch.Generator().manual_seed(4), shard=Shard(rank, 2)))
        for rank in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == len(single) == num_batches(n, 16, Shard(0, 2))
    for whole, first, second in zip(single, *shards, strict=True):
        assert torch.equal(torch.cat([first, second]), whole)
        assert abs(len(first) - len(second)) <= 1


def test_the_blocks_of_rows_cover_every_row_once():
    for total in (0, 1, 7, 10):
        rows = [torch.arange(total)[Shard(rank, 3).rows(total)] for rank in range(3)]
        assert torch.equal(torch.cat(rows), torch.arange(total))


def _rank_one(launcher: psutil.Process) -> psutil.Process | None:
    for child in launcher.children(recursive=True):
        try:
            if child.environ().get("RANK") == "1":
                return child
        except psutil.Error:
            continue
    return None


def _one_update(data, run, *options):
    """One epoch of one batch of 64 images: a single optimizer update; in this process unless
    the options start processes of their own."""
    settings = ["max_epochs=1", "warmup_epochs=1", "augment=none", "channels_last=false"]
    arguments = ["train", str(data), "--recipe", "digits", "--quiet", "--run-dir", str(run)]
    if "--nproc" in options:
        command = [sys.executable, "-m", "edgecls", *arguments, *settings, *options]
        result = subprocess.run(command, capture_output=True, timeout=300)
        assert result.returncode == 0, result.stderr.decode()
    else:
        result = CliRunner().invoke(main, [*arguments, *settings, *options])
        assert result.exit_code == 0, result.output
    return load_checkpoint(run / "last.pt")["model"]


@pytest.mark.slow
def test_two_processes_make_the_update_one_process_makes_on_their_global_batch(tmp_path):
    """2 x 32 images with synchronised batch norm against 1 x 64: the same shuffled batch, the
    same averaged gradient, the same batch statistics, so the same weights after the update."""
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for index in range(80):  # 64 to train on, 16 to validate
        folder = data / f"class {index % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (24, 24), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.png")
    one = _one_update(data, tmp_path / "one", "batch_size=64")
    two = _one_update(data, tmp_path / "two", "--nproc", "2", "batch_size=32", "sync_bn=true")
    config = build_config({**load_recipe("digits"), "channels_last": False})
    seed_everything(config.seed)
    start = create_models(config, 4)[0].state_dict()
    moved = sum((one[k].double() - start[k].double()).pow(2).sum() for k in one if k in start)
    apart = sum((one[k].double() - two[k].double()).pow(2).sum() for k in one)
    assert moved > 0 and (apart / moved) ** 0.5 < 0.01  # under 1% of the update


@pytest.mark.slow
def test_two_processes_train_one_run_that_survives_a_dead_rank(tmp_path):
    """The digits recipe for 3 epochs in 2 processes: rank 1 is killed after the first
    checkpoint; the run resumes in two processes, and eval and export read its folder."""
    run = tmp_path / "ddp"
    train = [sys.executable, "-m", "edgecls", "train", "--recipe", "digits", "--quiet"]
    args = [*train, "--epochs", "3", "--run-dir", str(run), "--nproc", "2", "batch_size=32"]
    launcher = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (run / "last.pt").is_file() and launcher.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 2 minutes"
        time.sleep(0.2)
    victim = _rank_one(psutil.Process(launcher.pid))
    assert victim is not None, "no rank 1 process"
    victim.send_signal(signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=60)
    assert launcher.returncode != 0
    assert "--resume" in stderr.decode() and "Traceback" not in stderr.decode()
    interrupted = load_checkpoint(run / "last.pt")  # intact
    assert 1 <= interrupted["state"]["epoch"] < 3

    resumed = subprocess.run(
        [sys.executable, "-m", "edgecls", "train", "--resume", str(run), "--nproc", "2"],
        capture_output=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr.decode()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["epochs_trained"] == 3
    assert [r["epoch"] for r in metrics["resumes"]] == [interrupted["state"]["epoch"]]
    # it learnt across the resume: 3 warmup epochs leave val top-1 at 0.43 on one 2-core CPU and
    # above 0.5 on another, so the loss says it and top-1 only needs to beat chance (10 classes)
    history = csv.DictReader((run / "history.csv").read_text().splitlines())
    losses = [float(row["train_loss"]) for row in history]
    assert len(losses) == 3 and losses[-1] < 0.7 * losses[0]
    assert metrics["val_top1"] > 0.2
    assert [p.name for p in tmp_path.iterdir()] == ["ddp"]  # one run folder

    checked = CliRunner().invoke(main, ["eval", str(run), "digits"])
    assert checked.exit_code == 0, checked.output
    exported = CliRunner().invoke(main, ["export", str(run), "--format", "onnx"])
    assert exported.exit_code == 0, exported.output


def test_a_user_error_met_only_by_another_process_is_said(tmp_path):
    """A process other than rank 0 prints its error naming itself under an outside torchrun, or
    leaves it for `--nproc`'s launcher, which prints it when rank 0 did not meet it."""
    import os
    import subprocess
    import sys

    from edgecls.training.launcher import _errors_of_other_ranks

    fail = "from edgecls.cli import fail; fail('no such folder: /data')"
    env = {**os.environ, "RANK": "1"}
    env.pop("EDGECLS_ERRORS_DIR", None)
    alone = subprocess.run([sys.executable, "-c", fail], env=env, capture_output=True, text=True)
    assert alone.returncode == 2
    assert alone.stderr.strip() == "error: (process 1) no such folder: /data"
    env["EDGECLS_ERRORS_DIR"] = str(tmp_path)
    left = subprocess.run([sys.executable, "-c", fail], env=env, capture_output=True, text=True)
    assert left.returncode == 2 and left.stderr == ""
    assert _errors_of_other_ranks(str(tmp_path), 2) == [
        "error: (process 1 of 2) no such folder: /data"
    ]


ROLLBACK_SCRIPT = """
import sys
from pathlib import Path

import numpy as np
import torch

from edgecls import runs
from edgecls.config import build_config
from edgecls.data import load_dataset
from edgecls.training.distributed import join
from edgecls.training.loop import Trainer

out = Path(sys.argv[1])
world = join()
dataset = load_dataset("digits", input_size=16, grayscale=True, progress=False)
config = build_config({"model": "mobilenetv3_small_050", "input_size": 16, "grayscale": True,
                       "lr": 0.01, "batch_size": 16, "workers": 0})
run_dir = out / f"rank{world.rank}"  # on several machines, only rank 0's folder has last.pt
run_dir.mkdir(parents=True, exist_ok=True)
trainer = Trainer(config, dataset, run_dir=run_dir, world=world)
trainer.start = trainer.checkpoint()
if world.main:
    with torch.no_grad():
        for parameter in trainer.model.parameters():
            parameter.add_(1.0)
    runs.save_checkpoint(trainer.checkpoint(), run_dir / "last.pt")
    with torch.no_grad():
        for parameter in trainer.model.parameters():
            parameter.sub_(1.0)
trainer.roll_back(0, "a test")
total = sum(float(p.double().sum()) for p in trainer.model.parameters())
(out / f"sum{world.rank}").write_text(repr(total))
"""


@pytest.mark.slow
def test_a_rollback_restores_rank_0s_checkpoint_on_every_rank(tmp_path):
    """Each rank with a run folder of its own, as on two machines: rank 0's last.pt (weights +1)
    is the state both return to, not rank 1's start."""
    import os
    import socket
    import subprocess
    import sys

    script = tmp_path / "rollback.py"
    script.write_text(ROLLBACK_SCRIPT)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2"}
    ranks = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path)],
            env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stderr=subprocess.PIPE,
        )
        for rank in range(2)
    ]
    for process in ranks:
        assert process.wait(timeout=300) == 0, process.stderr.read().decode()[-2000:]
    sums = [float((tmp_path / f"sum{rank}").read_text()) for rank in range(2)]
    assert sums[0] == pytest.approx(sums[1])
