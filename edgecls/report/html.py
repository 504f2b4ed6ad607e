"""`report.html` and `report.md` in a run folder: one page to look at or send to a colleague.

The HTML is self-contained (figures inlined as base64 PNG, no scripts, no external files) and
opens offline; the Markdown says the same for a terminal, its figures referenced beside it.
Sections: summary, plan and config, curves, confusion matrix, per-class precision / recall / F1
with support, the most confident mistakes, saliency maps (where the model looks), calibration
(reliability before and after temperature scaling), robustness when `edgecls eval --corruptions`
has run, and the exports' parity and latency when the run was exported or benched.
`write_report` can run again at any time (eval and bench call it) and rebuilds both from the
files in the folder.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from edgecls import runs
from edgecls.report import escape

AUDIT_ROWS = 10  # leaked groups listed in the report (audit.html shows them all)
CURVES = ("accuracy.png", "loss.png", "lr.png")
SHOWN_CONFIG = (
    "recipe", "data", "model", "pretrained", "input_size", "grayscale", "batch_size", "lr",
    "schedule", "max_epochs", "time_budget", "augment", "hflip", "sam", "mutual",
    "label_smoothing", "progressive_resizing", "whiten_stem", "random_erasing", "mixup", "cutmix",
    "ema", "tta", "tta_shift", "balance", "seed",
)  # fmt: skip


def _read(path: Path) -> dict[str, Any] | None:
    return runs.read_json(path) if path.is_file() else None


class Page:
    """The report's content once, rendered as HTML and as Markdown."""

    def __init__(self) -> None:
        self.html: list[str] = []
        self.markdown: list[str] = []

    def heading(self, text: str) -> None:
        self.html.append(f"<h2>{html.escape(text)}</h2>")
        self.markdown += [f"## {escape.markdown(text)}", ""]

    def paragraph(self, text: str) -> None:
        self.html.append(f"<p>{html.escape(text)}</p>")
        self.markdown += [escape.markdown(text), ""]

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
            for row in rows
        )
        self.html.append(f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>")
        self.markdown += [
            "| " + " | ".join(map(escape.markdown, header)) + " |",
            "|" + "---|" * len(header),
            *("| " + " | ".join(map(escape.markdown, row)) + " |" for row in rows),
            "",
        ]

    def figure(self, path: Path, caption: str) -> None:
        if not path.is_file():
            return
        encoded = base64.b64encode(path.read_bytes()).decode()
        self.html.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
        self.markdown += [f"![{escape.markdown(caption)}]({path.name})", ""]


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
th { background: #f3f3f3; } img { max-width: 100%; } figure { margin: 1em 0; }
figcaption { color: #555; font-size: .85em; }
"""


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _summary(page: Page, metrics: dict[str, Any], run_dir: Path) -> None:
    page.heading("Summary")
    rows = [["run folder", str(run_dir)], list(runs.kept_epoch_row(metrics)),
            ["training time", f"{metrics['train_seconds']:.0f} s"]]  # fmt: skip
    for split in ("val", "test"):
        if split in metrics:
            scores = metrics[split]
            rows.append(
                [
                    f"{split} ({scores['num_samples']} images)",
                    f"top-1 {_percent(scores['top1'])}, top-5 {_percent(scores['top5'])}, mAP "
                    f"{scores['map']:.4f}, balanced accuracy "
                    f"{_percent(scores.get('balanced_accuracy'))}",
                ]
            )
    rows.append(["training / validation images", f"{metrics['num_train']} / {metrics['num_val']}"])
    page.table(["", ""], rows)


def _plan_and_config(page: Page, run_dir: Path) -> None:
    page.heading("Plan and configuration")
    plan = _read(run_dir / "plan.json")
    if plan is not None:
        reasons = plan.get("reasons", {})
        page.table(
            ["setting", "planned", "why"],
            [[key, value, reasons.get(key, "")] for key, value in plan["values"].items()],
        )
        for note in plan.get("notes", []):
            page.paragraph(note)
    config = runs.read_config(run_dir)
    page.table(["key", "value"], [[k, config.get(k)] for k in SHOWN_CONFIG if k in config])
    page.paragraph(f"Every setting: {run_dir / 'config.yaml'}")


def leak_advice(data: str) -> str:
    """What a user can do about copies across splits: a folder or list can be re-split, a
    built-in dataset's images are not files, so --fix-splits cannot list them."""
    if Path(data).exists():
        return f"edgecls check-data {data} --audit --fix-splits OUT writes splits without them"
    return f"{data} is built in: its splits stay as they are (--fix-splits lists image files)"


def _audit(page: Page, run_dir: Path) -> None:
    audit = _read(run_dir / "audit.json")
    if audit is None:  # audit=off, or a run of an edgecls before the audit
        return
    page.heading("Data audit")
    groups = audit["duplicates"]
    leaks = [group for group in groups if group["leak"]]
    kinds = [outlier["kind"] for outlier in audit["outliers"]]
    page.table(
        ["finding", "count"],
        [
            ["exact duplicate groups", sum(group["kind"] == "exact" for group in groups)],
            ["near-duplicate groups", sum(group["kind"] == "near" for group in groups)],
            ["groups across splits (leaks)", len(leaks)],
            ["likely label errors", len(audit["label_issues"])],
            *[[f"outliers ({kind})", kinds.count(kind)] for kind in sorted(set(kinds))],
        ],
    )
    if leaks:
        page.paragraph(
            f"{sum(len(group['paths']) for group in leaks)} images are in groups of copies that "
            "span splits: the validation and test scores count images the model was "
            f"trained on. {leak_advice(runs.read_config(run_dir).get('data', 'DATA'))}."
        )
        page.table(
            ["group", "kind", "images (split)"],
            [
                [
                    number,
                    group["kind"],
                    ", ".join(
                        f"{path} ({split})"
                        for path, split in zip(group["paths"], group["splits"], strict=True)
                    ),
                ]
                for number, group in enumerate(leaks[:AUDIT_ROWS], 1)
            ],
        )
    for note in audit["notes"]:
        page.paragraph(note)
    page.paragraph(
        "Thumbnails of every finding: audit.html in the run folder; all rows: audit.csv."
    )


def _per_class(page: Page, metrics: dict[str, Any]) -> None:
    split = "test" if "test" in metrics else "val"
    page.heading(f"Per class ({split})")
    rows = []
    for row in metrics[split]["per_class"]:
        p, r = row["precision"], row["recall"]
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        rows.append([row["class"], _percent(p), _percent(r), _percent(f1), row["support"]])
    page.table(["class", "precision", "recall", "F1", "support"], rows)


def _calibration(page: Page, metrics: dict[str, Any], run_dir: Path) -> None:
    calibration = metrics.get("calibration")
    if not calibration:
        return
    page.heading("Calibration")
    rows = [
        [
            split,
            f"{calibration[split]['ece']:.4f}",
            f"{calibration[f'{split}_calibrated']['ece']:.4f}",
        ]
        for split in ("val", "test")
        if split in calibration
    ]
    page.table(["split", "ECE as trained", "ECE temperature-scaled"], rows)
    page.paragraph(
        f"Temperature T = {calibration['temperature']:.3f}, fitted on the validation split "
        "(15-bin expected calibration error). It is stored in best.pt and in every export's "
        "metadata, so predict returns softmax(logits / T): calibrated probabilities, same top-1."
    )
    page.figure(run_dir / "reliability.png", "reliability diagram")


def _robustness(page: Page, run_dir: Path) -> None:
    robustness = _read(run_dir / "eval" / "robustness.json")
    if robustness is None:
        return
    page.heading("Robustness")
    page.paragraph(robustness["summary"])
    page.table(
        ["corruption", *(f"severity {s}" for s in range(1, 6)), "mean top-1"],
        [
            [name, *(_percent(v) for v in row["top1"]), _percent(row["mean_top1"])]
            for name, row in robustness["corruptions"].items()
        ],
    )
    page.table(
        ["perturbation", "flip rate"],
        [[name, _percent(value)] for name, value in robustness["flip_rates"].items()],
    )


def _deployment(page: Page, run_dir: Path) -> None:
    reports = sorted((run_dir / "export").glob("*_report.json"))
    bench = _read(run_dir / "bench.json")
    if not reports and bench is None:
        return
    page.heading("Deployment")
    if reports:
        rows = []
        for path in reports:
            report = runs.read_json(path)
            per_runtime = report.get("runtimes", {}).items()
            runtimes = ", ".join(f"{name} {_percent(share)}" for name, share in per_runtime)
            latency = report.get("latency_ms")
            rows.append(
                [
                    Path(report["path"]).name,
                    report["format"],
                    report["precision"],
                    _percent(report.get("top1_agreement")),
                    _percent(report.get("top1")),
                    "-" if latency is None else f"{latency:.2f}",
                    runtimes or "-",
                ]
            )
        header = ["file", "format", "precision", "agreement", "top-1", "batch-1 ms", "per runtime"]
        page.table(header, rows)
    if bench is not None:
        page.table(
            ["backend", "precision", "batch", "latency ms", "file MB", "peak MB", "top-1 drop"],
            [
                [
                    r["backend"], r["precision"], r["batch"], f"{r['latency_ms']:.2f}",
                    "-" if r.get("file_mb") is None else f"{r['file_mb']:.2f}",
                    "-" if r.get("peak_memory_mb") is None else f"{r['peak_memory_mb']:.0f}",
                    "-" if r.get("top1_drop") is None else f"{r['top1_drop']:+.2f}",
                ]
                for r in bench["rows"]
            ],
        )  # fmt: skip


def _saliency(page: Page, metrics: dict[str, Any], run_dir: Path) -> None:
    saliency = metrics.get("saliency")
    if saliency is None:  # a run of an edgecls before saliency maps
        return
    page.heading("Saliency maps")
    if "skipped" in saliency:
        page.paragraph(f"Not computed: {saliency['skipped']}")
        return
    page.paragraph(
        f"Where the best model looks on the validation split: {saliency['method']}, for the "
        "class it predicted; red marks the pixels that prediction depends on most, blue the "
        f"least ({saliency['seconds']:.1f} s to compute)."
    )
    mistakes, correct = saliency["mistakes"], saliency["correct"]
    if mistakes:
        caption = f"the {len(mistakes)} most confident mistakes on validation"
        page.figure(run_dir / "saliency_mistakes.png", caption)
    else:
        page.paragraph("No mistakes on the validation split.")
    if correct:
        caption = f"the most confident correct image of each of {len(correct)} classes"
        page.figure(run_dir / "saliency_correct.png", caption)


def write_report(run_dir: Path) -> tuple[Path, Path]:
    """report.html and report.md from what the run folder holds now."""
    metrics = runs.read_json(run_dir / "metrics.json")
    page = Page()
    _summary(page, metrics, run_dir)
    _plan_and_config(page, run_dir)
    _audit(page, run_dir)
    page.heading("Training curves")
    for name in CURVES:
        page.figure(run_dir / name, name.removesuffix(".png"))
    split = "test" if "test" in metrics else "val"
    page.heading("Confusion matrix")
    page.figure(run_dir / f"confusion_{split}.png", f"confusion matrix ({split})")
    _per_class(page, metrics)
    mistakes = metrics.get("mistakes", [])
    page.heading("Most confident mistakes")
    if mistakes:
        page.figure(run_dir / "mistakes.png", f"the {len(mistakes)} most confident mistakes")
        page.table(
            ["image", "true", "predicted", "confidence"],
            [[m["source"], m["true"], m["predicted"], _percent(m["confidence"])] for m in mistakes],
        )
    else:
        page.paragraph(f"No mistakes on the {split} split.")
    _saliency(page, metrics, run_dir)
    _calibration(page, metrics, run_dir)
    _robustness(page, run_dir)
    _deployment(page, run_dir)
    title = f"edgecls run {run_dir.name}"
    document = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        + "\n".join(page.html)
        + "</body></html>\n"
    )
    html_path, markdown_path = run_dir / "report.html", run_dir / "report.md"
    runs.write_text(html_path, document)
    runs.write_text(markdown_path, "\n".join([f"# {escape.markdown(title)}", "", *page.markdown]))
    return html_path, markdown_path
