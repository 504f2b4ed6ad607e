"""The LR search shared by several workers: `edgecls lr-find --workers N` on one machine (a
journal file), and workers joining one study in a real PostgreSQL server started here."""

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

# 8 three-epoch trials of a small model on 120 digit images at 32 px: long enough (about 10 s in
# all) that a worker starting a few seconds after the first still finds trials to run.
SEARCH = [
    "model=mobilenetv3_small_100",
    "input_size=32",
    "grayscale=true",
    "hflip=false",
    "batch_size=16",
    "lr_search_trials=8",
    "lr_search_epochs=3",
    "workers=0",
    "pretrained=false",
    "augment=basic",  # what a planned training run might change, named in the study
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# Commands that test the shared storage, not the plan, skip planning (a few seconds each).
RECIPE = ["--recipe", "digits"]


def lr_find(folder: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "edgecls", "lr-find", str(folder), "--method", "tpe"]
    return subprocess.run(
        [*command, *SEARCH, "--out", str(out), "--quiet", *extra],
        capture_output=True,
        text=True,
        env=ENV,
    )


def counted_trials(storage) -> list:
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(states=states)


def test_local_workers_share_one_journal_and_run_exactly_the_trials_asked(digit_folder, tmp_path):
    done = lr_find(digit_folder, tmp_path / "out", "--workers", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    journal = tmp_path / "out" / "lr_search.journal"
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    trials = counted_trials(storage)
    assert len(trials) == 8
    pids = {t.user_attrs["pid"] for t in trials}
    assert len(pids) == 2, "both workers ran trials"
    chosen = json.loads((tmp_path / "out" / "lr_search.json").read_text())["lr"]
    worker = json.loads((tmp_path / "out" / "worker-1" / "lr_search.json").read_text())["lr"]
    best = max(trials, key=lambda t: (t.value or -1, -t.number))
    assert chosen == worker == best.params["lr"]


def _pg_binary(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of its own: a temporary data directory, a free local port, trust
    authentication for one user; stopped and removed afterwards."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (the postgres extra)")
    initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("the PostgreSQL server is not installed (Debian's postgresql package)")
    as_user = []
    if os.geteuid() == 0:  # the server refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
    folder = Path(tempfile.mkdtemp(prefix="edgecls-pg-"))
    if as_user:
        shutil.chown(folder, "postgres", "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = folder / "db"
    subprocess.run(
        [*as_user, initdb, "-D", str(data), "-U", "edgecls", "--auth=trust"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    start = [*as_user, pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w"]
    subprocess.run([*start, "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://edgecls@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "stop"], check=False)
        shutil.rmtree(folder, ignore_errors=True)


def test_workers_on_two_commands_join_one_postgresql_study(digit_folder, tmp_path, postgres):
    storage = f"lr_search_storage={postgres}"
    # Two commands started apart, as on two machines: the same study by name, 8 trials in all.
    first = subprocess.Popen(
        [sys.executable, "-m", "edgecls", "lr-find", str(digit_folder), "--method", "tpe",
         *SEARCH, *RECIPE, storage, "--out", str(tmp_path / "a"), "--quiet"],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    second = lr_find(digit_folder, tmp_path / "b", storage, *RECIPE)
    _, first_err = first.communicate()
    assert first.returncode == 0 and second.returncode == 0, first_err[-2000:] + second.stderr
    trials = counted_trials(optuna.storages.RDBStorage(postgres))
    assert len(trials) == 8 and len({t.user_attrs["pid"] for t in trials}) == 2
    chosen = {json.loads((tmp_path / name / "lr_search.json").read_text())["lr"] for name in "ab"}
    assert len(chosen) == 1

    # A training run on the same storage reads the same LR without a trial of its own.
    run = tmp_path / "run"
    trained = subprocess.run(
        [sys.executable, "-m", "edgecls", "train", str(digit_folder), "lr=tpe", *SEARCH,
         storage, "max_epochs=1", "--run-dir", str(run), "--quiet"],
        env=ENV, capture_output=True, text=True,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert json.loads((run / "lr_search.json").read_text())["lr"] in chosen
    assert len(counted_trials(optuna.storages.RDBStorage(postgres))) == 8


def test_worker_command_lines_never_hold_the_storage_password(digit_folder, tmp_path, postgres):
    import psutil
    import psycopg

    with psycopg.connect(postgres, autocommit=True) as connection:  # a study of its own
        connection.execute("CREATE DATABASE secrets")
    password = "s3/cr3t"  # trust authentication ignores it; `ps` must not show it
    url = postgres.replace("edgecls@", f"edgecls:{password}@").replace("/postgres", "/secrets")
    command = [sys.executable, "-m", "edgecls", "lr-find", str(digit_folder), "--method", "tpe"]
    search = subprocess.Popen(
        [*command, *SEARCH, *RECIPE, "lr_search_epochs=1", f"lr_search_storage={url}",
         "--workers", "2",
         "--out", str(tmp_path / "out"), "--quiet"],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen = []
    while search.poll() is None:
        try:
            children = psutil.Process(search.pid).children(recursive=True)
            seen += [" ".join(child.cmdline()) for child in children]
        except psutil.Error:  # a child that ended between the listing and the reading
            pass
        time.sleep(0.05)  # the search needs the cores more than this loop does
    _, errors = search.communicate()
    assert search.returncode == 0, errors[-2000:]
    workers = [line for line in seen if "--worker-index" in line]
    assert workers, "the worker process was seen running"
    assert not [line for line in workers if password in line or "lr_search_storage" in line]
    trials = counted_trials(optuna.storages.RDBStorage(postgres.replace("/postgres", "/secrets")))
    assert len(trials) == 8  # the search ran, its storage reached through the environment
