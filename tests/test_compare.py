"""`edgecls compare`: a table of runs, the settings that differ, sorted by a metric."""

import csv

import pytest
from click.testing import CliRunner

import edgecls
from edgecls.cli import main
from edgecls.report.compare import compare_runs

SETTINGS = {"input_size": 16, "max_epochs": 2, "workers": 0}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, lr in (("slow", 0.001), ("fast", 0.05)):
        edgecls.train(
            "digits", recipe="digits", run_dir=root / name, progress=False, lr=lr, **SETTINGS
        )
    return root


def test_compare_sorts_by_the_metric_and_shows_only_the_settings_that_differ(two_runs):
    rows, differing = compare_runs([two_runs / "slow", two_runs / "fast"], sort="top1")
    assert differing == ["lr"]
    assert [r["top1"] for r in rows] == sorted((r["top1"] for r in rows), reverse=True)
    assert {r["recipe"] for r in rows} == {"digits"} and {r["model"] for r in rows} == {
        "mobilenetv3_small_100"
    }
    rows, _ = compare_runs([two_runs / "slow", two_runs / "fast"], sort="wall_s")
    assert rows[0]["wall_s"] <= rows[1]["wall_s"]


def test_compare_command_takes_a_folder_of_runs_and_saves_the_table(two_runs, tmp_path):
    out = tmp_path / "table"
    result = CliRunner().invoke(main, ["compare", str(two_runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "| run |" in result.output and "| lr |" in result.output
    with open(out / "compare.csv") as handle:
        table = list(csv.DictReader(handle))
    assert {row["run"] for row in table} == {"slow", "fast"}
    assert {row["lr"] for row in table} == {"0.001", "0.05"}
    bad = CliRunner().invoke(main, ["compare", str(tmp_path), "--out", str(out)])
    assert bad.exit_code == 2 and "no run folders" in bad.output
    bad = CliRunner().invoke(main, ["compare", str(two_runs), "--sort", "speed"])
    assert bad.exit_code == 2 and "unknown sort key" in bad.output
