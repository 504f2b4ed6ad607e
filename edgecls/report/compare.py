"""`edgecls compare RUN...`: one table of runs, like the tracking table of paper 001: data,
model, recipe, the settings that differ between them, top-1 / top-5 / mAP (on the test split
when the run has one), epochs, wall time and the fastest batch-1 latency of its exports (or of
a bench saved in the run folder); sorted by a metric, printed and saved as Markdown and CSV."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from edgecls import runs
from edgecls.console import console
from edgecls.errors import UserError
from edgecls.report import escape

SORT_KEYS = ("top1", "top5", "map", "wall_s", "epochs", "latency_ms")
# Settings that always differ or say nothing about the recipe.
NOT_SETTINGS = {"data", "data_root", "recipe", "seed", "device", "workers", "eval_batch_size"}
ALWAYS_SHOWN = ("model", "input_size")


def _finished(run_dir: Path) -> bool:
    if (run_dir / "metrics.json").is_file():
        return True
    console.print(f"skipped {run_dir}: no metrics.json (training has not finished)", markup=False)
    return False


def _run_row(run_dir: Path) -> dict[str, Any]:
    config = runs.read_config(run_dir)
    metrics_path = run_dir / "metrics.json"
    metrics = runs.read_json(metrics_path)
    split = "test" if "test_top1" in metrics else "val"
    needed = [f"{split}_top1", f"{split}_top5", f"{split}_map", "epochs_trained", "train_seconds"]
    missing = [key for key in needed if not isinstance(metrics.get(key), (int, float))]
    if missing:
        raise UserError(
            f"{metrics_path} lacks {', '.join(missing)}: not the metrics of a finished run"
        )
    row: dict[str, Any] = {
        "run": run_dir.name,
        "data": config.get("data"),
        "model": config.get("model"),
        "recipe": config.get("recipe") or "-",
        "split": split,
        "top1": metrics[f"{split}_top1"],
        "top5": metrics[f"{split}_top5"],
        "map": metrics[f"{split}_map"],
        "epochs": metrics["epochs_trained"],
        "wall_s": metrics["train_seconds"],
        "latency_ms": None,
        "config": config,
    }
    latencies = [
        report["latency_ms"]
        for report in map(runs.read_json, sorted((run_dir / "export").glob("*_report.json")))
        if report.get("latency_ms") is not None
    ]
    bench = run_dir / "bench.json"
    if bench.is_file():
        latencies += [r["latency_ms"] for r in runs.read_json(bench)["rows"] if r["batch"] == 1]
    row["latency_ms"] = min(latencies) if latencies else None
    return row


def compare_runs(run_dirs: list[Path], sort: str = "top1") -> tuple[list[dict[str, Any]], list]:
    """The rows, best first by `sort` (lowest first for wall time and latency), and the config
    keys whose values differ between the runs."""
    if sort not in SORT_KEYS:
        raise UserError(f"unknown sort key '{sort}': choose from {', '.join(SORT_KEYS)}")
    folders = [d for d in run_dirs if d.is_dir() and runs.is_run_folder(d)]
    if not folders:
        raise UserError("no run folders among the given paths (a run folder holds config.yaml)")
    folders = [d for d in folders if _finished(d)]
    if not folders:
        raise UserError("none of the given runs has finished training (no metrics.json)")
    rows = [_run_row(d) for d in folders]
    keys = sorted({k for row in rows for k in row["config"]} - NOT_SETTINGS)
    differing = [
        k
        for k in keys
        if k not in ALWAYS_SHOWN and len({repr(row["config"].get(k)) for row in rows}) > 1
    ]
    ascending = sort in ("wall_s", "latency_ms")
    missing = float("inf") if ascending else float("-inf")
    rows.sort(key=lambda r: r[sort] if r[sort] is not None else missing, reverse=not ascending)
    return rows, differing


def _cells(row: dict[str, Any], differing: list[str]) -> list[str]:
    latency = f"{row['latency_ms']:.2f}" if row["latency_ms"] is not None else "-"
    return [
        row["run"],
        str(row["data"]),
        str(row["model"]),
        str(row["config"].get("input_size")),
        row["recipe"],
        *(str(row["config"].get(k)) for k in differing),
        row["split"],
        f"{100 * row['top1']:.2f}",
        f"{100 * row['top5']:.2f}",
        f"{row['map']:.4f}",
        str(row["epochs"]),
        f"{row['wall_s']:.0f}",
        latency,
    ]


def header(differing: list[str]) -> list[str]:
    return [
        "run", "data", "model", "input", "recipe", *differing, "split", "top-1 %", "top-5 %",
        "mAP", "epochs", "wall s", "latency ms",
    ]  # fmt: skip


def markdown_table(rows: list[dict[str, Any]], differing: list[str]) -> str:
    table = [header(differing), *(_cells(row, differing) for row in rows)]
    lines = ["| " + " | ".join(map(escape.markdown, cells)) + " |" for cells in table]
    lines.insert(1, "|" + "---|" * len(table[0]))
    return "\n".join(lines)


def save_comparison(rows: list[dict[str, Any]], differing: list[str], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    markdown, table = out / "compare.md", out / "compare.csv"
    runs.write_text(markdown, markdown_table(rows, differing) + "\n")
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(map(escape.csv_cell, header(differing)))
        writer.writerows(map(escape.csv_cell, _cells(row, differing)) for row in rows)
    return [markdown, table]
