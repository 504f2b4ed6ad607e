"""`edgecls compare`: a table of runs, the settings that differ, sorted by a metric."""

import csv

import pytest
from click.testing import CliRunner

import edgecls
from edgecls.cli import main
from edgecls.report.compare import compare_runs

pytestmark = pytest.mark.slow  # each trains for real

SETTINGS = {"input_size": 16, "max_epochs": 2, "workers": 0}


@pytest.fixture(scope="module")
def two_runs(tracked_run, tmp_path_factory):
    """The shared tracked run (3 epochs, tracking and export on) and one more with another LR,
    side by side in one folder of runs."""
    import shutil

    root = tmp_path_factory.mktemp("runs")
    shutil.copytree(tracked_run[0].run_dir, root / "tracked")
    edgecls.train(
        "digits", recipe="digits", run_dir=root / "plain", progress=False, lr=0.001, **SETTINGS
    )
    return root


def test_compare_sorts_by_the_metric_and_shows_only_the_settings_that_differ(two_runs):
    rows, differing = compare_runs([two_runs / "plain", two_runs / "tracked"], sort="top1")
    assert set(differing) == {"lr", "max_epochs", "tensorboard", "mlflow", "export"}
    assert [r["top1"] for r in rows] == sorted((r["top1"] for r in rows), reverse=True)
    assert {r["recipe"] for r in rows} == {"digits"} and {r["model"] for r in rows} == {
        "mobilenetv3_small_100"
    }
    latency = {r["run"]: r["latency_ms"] for r in rows}  # from the tracked run's ONNX export
    assert latency["tracked"] > 0 and latency["plain"] is None
    rows, _ = compare_runs([two_runs / "plain", two_runs / "tracked"], sort="wall_s")
    assert rows[0]["wall_s"] <= rows[1]["wall_s"]


def test_compare_command_takes_a_folder_of_runs_and_saves_the_table(two_runs, tmp_path):
    out = tmp_path / "table"
    result = CliRunner().invoke(main, ["compare", str(two_runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "| run |" in result.output and "| lr |" in result.output
    with open(out / "compare.csv") as handle:
        table = list(csv.DictReader(handle))
    assert {row["run"] for row in table} == {"plain", "tracked"}
    assert "0.001" in {row["lr"] for row in table}
    bad = CliRunner().invoke(main, ["compare", str(tmp_path), "--out", str(out)])
    assert bad.exit_code == 2 and "no run folders" in bad.output
    bad = CliRunner().invoke(main, ["compare", str(two_runs), "--sort", "speed"])
    assert bad.exit_code == 2 and "unknown sort key" in bad.output


def test_an_unfinished_run_is_skipped_and_said_and_bad_metrics_are_one_line(two_runs, tmp_path):
    import json
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(two_runs / "plain", root / "finished")
    (root / "unfinished").mkdir()
    for name in ("config.yaml", "history.csv"):  # a run stopped before its end
        shutil.copy(two_runs / "plain" / name, root / "unfinished" / name)
    result = CliRunner().invoke(main, ["compare", str(root), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "skipped" in result.stderr and "unfinished" in result.stderr
    assert "finished" in (tmp_path / "out" / "compare.md").read_text()

    metrics = json.loads((root / "finished" / "metrics.json").read_text())
    del metrics["val_top5"]
    (root / "finished" / "metrics.json").write_text(json.dumps(metrics))
    result = CliRunner().invoke(main, ["compare", str(root), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "val_top5" in line
