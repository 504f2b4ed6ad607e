"""The plan of a run as a table a person reads before training starts."""

from __future__ import annotations

from rich.table import Table

from edgecls.plan import Plan

SHOWN = (
    "model",
    "pretrained",
    "linear_probe",
    "input_size",
    "grayscale",
    "batch_size",
    "lr",
    "schedule",
    "max_epochs",
    "keep_epoch",
    "warmup_epochs",
    "time_budget",
    "augment",
    "hflip",
    "tta",
    "tta_shift",
    "label_smoothing",
    "progressive_resizing",
    "whiten_stem",
    "random_erasing",
    "mixup",
    "sam",
    "mutual",
    "amp",
    "eval_batch_size",
    "workers",
)


def plan_tables(plan: Plan) -> list[Table]:
    data = plan.data
    summary = Table(title="edgecls plan", show_header=False)
    summary.add_row(
        "data",
        f"{data.images} images, {data.classes} classes, about {data.median_side} px, "
        f"{'grey' if data.grayscale else 'colour'}, imbalance {data.imbalance:.1f}:1",
    )
    machine = plan.machine
    summary.add_row(
        "machine",
        f"{machine['device']}, {machine['cores']} cores, "
        f"{machine['free_memory_bytes'] / 2**30:.1f} GB free",
    )
    if plan.budget_seconds is not None:
        summary.add_row("time budget", f"{plan.budget_seconds / 60:.1f} min for the whole run")
    reasoned = [key for key in plan.reasons if key not in SHOWN]  # no rule's reason goes unsaid
    for key in (*SHOWN, *reasoned):
        if key in plan.user_keys:
            summary.add_row(key, "yours")
        elif key in plan.values:
            reason = plan.reasons.get(key, "")
            text = f"{plan.values[key]}" + (f"  [dim]{reason}[/dim]" if reason else "")
            summary.add_row(key, text)
    for note in plan.notes:
        summary.add_row("note", note)
    summary.add_row("planning took", f"{plan.seconds:.1f} s")

    candidates = Table(
        title="candidates measured on this machine",
        caption="img/s: training images per second (amp: in mixed precision); MB: memory; "
        "params: millions; ms: latency",
    )
    # train img/s, memory MB, parameters M, ONNX Runtime latency ms
    columns = ("model", "weights", "input", "img/s", "MB", "epochs", "params", "ms", "")
    for column in columns:
        candidates.add_column(column, overflow="fold")
    for index, c in enumerate(plan.candidates):
        figures = (
            f"{c.train_images_per_second:.0f}" + (" amp" if c.amp else ""),
            f"{c.memory_bytes / 2**20:.0f}",
            str(c.epochs) if plan.budget_seconds is not None else "-",
            f"{c.parameters / 1e6:.2f}",
            "-" if c.latency_ms is None else f"{c.latency_ms:.1f}",
        )
        candidates.add_row(
            c.model,
            c.weights,
            str(c.input_size),
            *(figures if c.measured else ["-"] * len(figures)),
            "[bold]chosen[/bold]" if index == plan.chosen else c.why_not,
        )
    return [summary, candidates]
