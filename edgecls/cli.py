"""The `edgecls` command line: parses the options, calls the matching `edgecls.api` function and
prints what it returns (tables for the console); every decision is the API's."""

from __future__ import annotations

import difflib
import functools
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgecls import config as cfg
from edgecls import runs
from edgecls.console import user_error_line
from edgecls.errors import UserError
from edgecls.registry import EXPORT_FORMATS, Registry

if TYPE_CHECKING:
    from edgecls.api import Run

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def fail(message: str) -> NoReturn:
    """How every bad input ends: one line on stderr (as plain text, not markup), exit status 2;
    under torchrun, said once for the run (`console.user_error_line`)."""
    line = user_error_line(message)
    if line is not None:
        err.print(f"[red]error:[/red] {escape(line)}", highlight=False, soft_wrap=True)
    sys.exit(2)


def user_errors(command):
    """Turn a UserError into a one-line message and exit status 2, and Ctrl-C into status 130."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as error:
            fail(str(error))
        except KeyboardInterrupt:
            err.print("interrupted")
            sys.exit(130)

    return wrapper


class _OneLineUsageErrors(click.Group):
    """A command's usage error (unknown option, value out of range) is one line and exit status 2,
    like every other bad input, not click's usage block."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as error:
            message = error.format_message()
            hint = f" (see {error.ctx.command_path} --help)" if error.ctx else ""
            fail(f"{message[:1].lower()}{message[1:]}{hint}")


@click.group(cls=_OneLineUsageErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgecls")
def main() -> None:
    """Train, check, evaluate and use small image classifiers without hand-tuning."""


def _config_range(key: str) -> click.ParamType:
    """The click type of an option that sets config key `key`: the key's type and range."""
    (rule,) = cfg.rules_of(key)
    kind = click.IntRange if isinstance(getattr(cfg.Config(), key), int) else click.FloatRange
    return kind(rule.low, rule.high, min_open=rule.open_low, max_open=rule.open_high)


class RegistryChoice(click.ParamType):
    """One of a registry's names, read when a command's help is shown or its value checked (not
    when the CLI starts: the implementations load slowly)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.name = registry.kind

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "[" + "|".join(self.registry.names()) + "]"

    def convert(self, value: str, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if value not in self.registry:
            names = ", ".join(self.registry.names())
            self.fail(f"unknown {self.registry.kind} '{value}': choose {names}", param, ctx)
        return value


def _split_args(args: tuple[str, ...]) -> tuple[str | None, list[str]]:
    """DATA and key=value pairs; anything else that looks like an option is a mistyped one
    (`ignore_unknown_options`, needed to let key=value through, lets those through too)."""
    unknown = next((a for a in args if a.startswith("-")), None)
    if unknown is not None:
        ctx = click.get_current_context()
        name = unknown.partition("=")[0]
        options = [o for p in ctx.command.params for o in p.opts + p.secondary_opts]
        close = difflib.get_close_matches(name, [o for o in options if o.startswith("--")], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise click.NoSuchOption(name, message=f"no such option: {name}{hint}", ctx=ctx)
    data = [a for a in args if "=" not in a]
    if len(data) > 1:
        raise UserError(f"expected at most one DATA argument, got {', '.join(data)}")
    return (data[0] if data else None), [a for a in args if "=" in a]


def _settings(pairs: list[str]) -> dict[str, str]:
    """key=value pairs as the API's settings, as text: the API types them (YAML)."""
    return dict(pair.partition("=")[::2] for pair in pairs)


def _given(options: dict[str, Any]) -> dict[str, Any]:
    """The options that were given (a None default is an option not given)."""
    return {key: value for key, value in options.items() if value is not None}


def _print_summary(run: Run) -> None:
    """The end of `edgecls train`: the run's summary as a table."""
    table = Table(title="edgecls train: the kept checkpoint", show_header=False)
    for label, value in run.summary():
        table.add_row(label, value)
    out.print(table)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1)
@click.option("--recipe", help=f"Recipe name ({', '.join(cfg.recipe_names())}) or YAML file.")
@click.option("--model", help="Any timm model name.")
@click.option("--pretrained/--no-pretrained", default=None, help="Start from timm hub weights.")
@click.option("--weights", type=click.Path(), help="Local state dict to start from.")
@click.option("--data-root", type=click.Path(), help="Root folder for torchvision datasets.")
@click.option("--lr", help="Initial learning rate, or a search: auto, tpe, range, grid.")
@click.option(
    "--epochs", "max_epochs", type=_config_range("max_epochs"), help="Maximum number of epochs."
)
@click.option("--seed", type=_config_range("seed"))
@click.option("--run-dir", type=click.Path(path_type=Path), help="Default: runs/<auto name>.")
@click.option("--overwrite", is_flag=True, help="Reuse a run folder that already holds files.")
@click.option("--resume", type=click.Path(path_type=Path), help="Continue the run in this folder.")
@click.option(
    "--accept-changed-data",
    is_flag=True,
    help="With --resume: continue although images were added, removed or split differently.",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--plan", "plan_only", is_flag=True, help="Print the plan for DATA and exit.")
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    help="Train in N processes on this machine (DDP through torchrun; batch_size is per process).",
)
@user_errors
def train(
    args,
    recipe,
    run_dir,
    overwrite,
    resume,
    accept_changed_data,
    quiet,
    plan_only,
    nproc,
    **options,
) -> None:
    """Train on DATA (default: the built-in digits) with optional key=value overrides
    (`edgecls keys` lists them).

    DATA is a folder (train/ val/ [test/] of class folders, or just class folders), a CSV/TXT
    list of path,label, or a built-in name (digits, mnist5k, fashion-mnist, cifar10, ...).
    """
    from edgecls import api

    started = runs.process_started()
    data, pairs = _split_args(args)
    given = _given(options)
    common = {"progress": not quiet, "messages": True, "nproc": nproc, "started": started}
    if accept_changed_data and not resume:
        raise UserError("--accept-changed-data goes with --resume RUN")
    if resume:
        if data or recipe or given or run_dir:
            raise UserError(
                "--resume continues a run with its saved config; only key=value overrides of "
                f"{', '.join(cfg.RESUME_KEYS)} may be added"
            )
        run = api.resume(
            resume, accept_changed_data=accept_changed_data, settings=_settings(pairs), **common
        )
    elif plan_only:
        settings = {**_settings(pairs), **given}
        api.show_plan(api.plan_run(data, recipe, started=started, settings=settings), out)
        return
    else:
        settings = {**_settings(pairs), **given}
        run = api.train(
            data,
            recipe,
            run_dir=run_dir,
            overwrite=overwrite,
            plan_console=out,
            settings=settings,
            **common,
        )
    if run is not None:
        _print_summary(run)


@main.command("lr-find", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1)
@click.option(
    "--recipe",
    help="Recipe name or YAML file (model, input size, ...); default: what train would plan.",
)
@click.option("--model", help="Any timm model name.")
@click.option(
    "--method", type=click.Choice(["range", "tpe", "grid"]), default="range", show_default=True
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    help="Where to keep the plot, trials and study (default: runs/lr-find-<auto>).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Run the tpe or grid trials in N local processes sharing one study (a journal file "
    "in --out, or lr_search_storage=URL); the same command on other machines with the same "
    "lr_search_storage joins the study.",
)
@click.option("--worker-index", type=int, default=0, hidden=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@user_errors
def lr_find(args, recipe, model, method, out_dir, workers, worker_index, quiet) -> None:
    """Estimate the initial learning rate for DATA alone: range test, TPE or grid search."""
    from edgecls import api

    data, pairs = _split_args(args)
    found = api.lr_find(
        data,
        recipe,
        model=model,
        method=method,
        out_dir=out_dir,
        workers=workers,
        worker_index=worker_index,
        progress=not quiet,
        settings=_settings(pairs),
    )
    result = found.result
    if result.trials:
        table = Table(title=f"LR search ({result.method})")
        for column in ("trial", "lr", "state", "best val top-1", "epochs"):
            table.add_column(column)
        for t in result.trials:
            top1 = "-" if t["top1"] is None else f"{t['top1']:.2%}"
            table.add_row(str(t["number"]), f"{t['lr']:.4g}", t["state"], top1, str(t["epochs"]))
        out.print(table)
    out.print(
        f"suggested lr: {result.lr:.4g} ({result.method}, {result.seconds:.0f} s); "
        f"details in {found.out_dir}",
        highlight=False,
    )


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1)
@click.option(
    "--recipe",
    help="The recipe the tricks are added to (or left out of). Default: what `edgecls train "
    "DATA` plans with the same settings (e.g. time_budget=5m), planned once.",
)
@click.option(
    "--stack",
    required=True,
    help="Tricks in order, comma-separated: a key (label_smoothing, mixup, ...: the papers' "
    "value) or key=value (teacher=runs/big).",
)
@click.option("--leave-one-out", is_flag=True, help="Each trick left out of the full stack.")
@click.option("--seeds", type=click.IntRange(1, 100), default=1, show_default=True)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    help="Default: runs/ablate-<recipe>-<time>.",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@user_errors
def ablate(args, recipe, stack, leave_one_out, seeds, out_dir, quiet) -> None:
    """Train RECIPE on DATA with tricks added one at a time (or left out one at a time) and
    print the table; key=value settings apply to every row (e.g. max_epochs=30)."""
    from edgecls import api

    data, pairs = _split_args(args)
    ablation = api.ablate(
        recipe,
        stack,
        data,
        leave_one_out=leave_one_out,
        seeds=seeds,
        out_dir=out_dir,
        progress=not quiet,
        settings=_settings(pairs),
    )
    out.print(ablation.markdown, highlight=False, markup=False)
    out.print(f"wrote {ablation.out_dir}/ablation.md, ablation.csv, ablation.png", highlight=False)


@main.command("check-data")
@click.argument("data")
@click.option("--input-size", type=_config_range("input_size"), default=64, show_default=True)
@click.option("--grayscale", is_flag=True)
@click.option("--val-fraction", type=_config_range("val_fraction"), default=0.2, show_default=True)
@click.option("--data-root", type=click.Path())
@click.option("--seed", type=_config_range("seed"), default=0)
@click.option(
    "--audit",
    is_flag=True,
    help="Also find duplicates (within and across splits), likely label errors and outliers.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("audit"),
    show_default=True,
    help="With --audit: where audit.json, audit.csv and audit.html go.",
)
@click.option(
    "--fix-splits",
    type=click.Path(path_type=Path),
    help="With --audit: write a list-file dataset here with leaked duplicates moved into train.",
)
@user_errors
def check_data(
    data, input_size, grayscale, val_fraction, data_root, seed, audit, out_dir, fix_splits
) -> None:
    """Show what was found in DATA, per split and class, and every problem; with --audit, also
    duplicates, leaks across splits, likely label errors and outliers."""
    from edgecls import api

    if audit or fix_splits is not None:
        _audit(data, input_size, grayscale, val_fraction, data_root, seed, out_dir, fix_splits)
        return
    check = api.check_data(
        data,
        input_size=input_size,
        grayscale=grayscale,
        val_fraction=val_fraction,
        seed=seed,
        data_root=data_root,
        progress=True,
    )
    out.print(check.text, highlight=False, markup=False)
    if not check.ok:
        sys.exit(2)


def _audit(data, input_size, grayscale, val_fraction, data_root, seed, out_dir, fix_splits) -> None:
    from edgecls import api

    audit = api.audit(
        data,
        out_dir=out_dir,
        fix_splits=fix_splits,
        input_size=input_size,
        grayscale=grayscale,
        val_fraction=val_fraction,
        seed=seed,
        data_root=data_root,
        progress=True,
    )
    result = audit.result
    table = Table(title=f"audit of {data}")
    for column in ("finding", "count", "examples"):
        table.add_column(column, overflow="fold")
    exact = [g for g in result.duplicates if g.kind == "exact"]
    near = [g for g in result.duplicates if g.kind == "near"]
    rows = [
        ("exact duplicate groups", exact, lambda g: " = ".join(g.paths[:2])),
        ("near-duplicate groups", near, lambda g: " ~ ".join(g.paths[:2])),
        ("groups across splits (leaks)", result.leaks, lambda g: " / ".join(g.paths[:2])),
        (
            "likely label errors",
            result.label_issues,
            lambda i: f"{i.path}: {i.given} -> {i.suggested}?",
        ),
    ]
    for kind in ("far", "constant", "tiny"):
        found = [o for o in result.outliers if o.kind == kind]
        rows.append((f"outliers ({kind})", found, lambda o: o.path))
    for finding, items, example in rows:
        table.add_row(finding, str(len(items)), example(items[0]) if items else "")
    out.print(table, markup=False, highlight=False)
    for note in result.notes:
        out.print(f"note: {note}", markup=False, highlight=False)
    images = sum(result.images.values())
    out.print(
        f"{images} images audited in {sum(result.seconds.values()):.1f} s; wrote "
        f"{', '.join(map(str, audit.written))}",
        markup=False,
        highlight=False,
    )
    if audit.fixed is not None:
        out.print(
            f"wrote a list-file dataset with the leaks moved into train: {audit.fixed} "
            f"(check it: edgecls check-data {audit.fixed})",
            markup=False,
            highlight=False,
        )


@main.command()
@click.argument("pattern", required=False)
@user_errors
def keys(pattern) -> None:
    """The config keys that key=value sets (those whose name holds PATTERN): type, default,
    allowed values and what each does."""
    from edgecls import api

    table = Table(show_lines=False)
    for column in ("key", "type", "default", "allowed", "what it does"):
        table.add_column(column, overflow="fold")
    for key in api.config_keys(pattern):
        table.add_row(key.name, key.type, repr(key.default), key.allowed, key.help)
    out.print(table, markup=False, highlight=False)


@main.command()
@click.option(
    "--dir",
    "cache_dir",
    type=click.Path(path_type=Path),
    help="Default: $EDGECLS_CACHE_DIR or ~/.cache/edgecls/images.",
)
@click.option("--clean", is_flag=True, help="Remove entries (decoded again when next needed).")
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="With --clean: only entries unused for this many days.",
)
@user_errors
def cache(cache_dir, clean, older_than) -> None:
    """List the disk image cache's entries (one per dataset and input size), or remove them."""
    from edgecls import api

    if clean:
        removed, busy = api.clean_cache(cache_dir, older_than)
        freed = sum(entry.bytes for entry in removed) / 2**30
        out.print(f"removed {len(removed)} cache entries, {freed:.2f} GB", highlight=False)
        for entry in busy:
            err.print(f"left {entry.folder}: a run is writing it", markup=False, highlight=False)
        return
    table = Table()
    for column in ("entry", "images", "GB", "last used"):
        table.add_column(column)
    entries = api.cache_entries(cache_dir)
    for entry in entries:
        images = "unfinished" if entry.images is None else str(entry.images)
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.last_used))
        table.add_row(str(entry.folder), images, f"{entry.bytes / 2**30:.2f}", used)
    out.print(table, markup=False, highlight=False)
    total = sum(entry.bytes for entry in entries) / 2**30
    out.print(f"{len(entries)} entries, {total:.2f} GB", highlight=False)


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--sort",
    default="top1",
    show_default=True,
    help="top1, top5, map (best first), wall_s, latency_ms (lowest first) or epochs.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("runs/compare"),
    show_default=True,
    help="Where compare.md and compare.csv go.",
)
@user_errors
def compare(run_dirs, sort, out_dir) -> None:
    """A table of runs (folders, or folders of runs like runs/), sorted by a metric."""
    from edgecls import api

    comparison = api.compare(run_dirs, sort=sort, out_dir=out_dir)
    out.print(comparison.markdown, highlight=False, markup=False, soft_wrap=True)
    out.print(f"saved {' and '.join(map(str, comparison.saved))}", highlight=False, markup=False)


@main.command("eval")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("data")
@click.option(
    "--split",
    type=click.Choice(["auto", "train", "val", "test", "all"]),
    default="auto",
    show_default=True,
    help="auto: test if DATA has one, else val.",
)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Where to save metrics.")
@click.option("--data-root", type=click.Path())
@click.option(
    "--corruptions",
    is_flag=True,
    help="Also top-1 under 10 common corruptions at 5 severities, mCE and flip rates.",
)
@click.option(
    "--reference",
    type=click.Path(path_type=Path),
    help="A run (or .pt) that mCE and mFR are relative to.",
)
@click.option(
    "--corruption-images",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Images (a seeded subset of the split) the corruptions are measured on.",
)
@user_errors
def evaluate(
    model, data, split, out_dir, data_root, corruptions, reference, corruption_images
) -> None:
    """Top-1, top-5, mAP, per-class table, confusion matrix of MODEL (run or .pt) on DATA."""
    from edgecls import api
    from edgecls.evaluate import format_metrics

    evaluation = api.evaluate(
        model,
        data,
        split=split,
        out_dir=out_dir,
        data_root=data_root,
        corruptions=corruptions,
        reference=reference,
        corruption_images=corruption_images,
    )
    title = f"{data} ({evaluation.split})"
    out.print(format_metrics(evaluation.metrics, title=title), highlight=False, markup=False)
    if evaluation.robustness is not None:
        out.print(evaluation.robustness["summary"], highlight=False, markup=False)
        for name, row in evaluation.robustness["corruptions"].items():
            cells = " ".join(f"{100 * t:5.1f}" for t in row["top1"])
            out.print(f"  {name:<15} top-1 % at severity 1-5: {cells}", highlight=False)
    out.print(f"saved to {evaluation.out_dir}", highlight=False, markup=False)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), help="Also write a CSV.")
@user_errors
def predict(model, inputs, top_k, csv_path) -> None:
    """Top-k labels with probabilities for images or folders of images."""
    from edgecls import api

    predictions, skipped = api.predict(model, inputs, top_k=top_k, csv_path=csv_path)
    for p in predictions:
        labels = ", ".join(
            f"{lab} {prob:.1%}" for lab, prob in zip(p.labels, p.probabilities, strict=True)
        )
        out.print(f"{p.path}: {labels}", highlight=False, markup=False)
    for path, reason in skipped:
        err.print(f"skipped {path}: {reason}", highlight=False, markup=False)
    if csv_path:
        out.print(f"wrote {csv_path}", highlight=False, markup=False)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("runs/explain"),
    show_default=True,
    help="Where the overlays and explain.html go.",
)
@click.option(
    "--method",
    type=click.Choice(["auto", "gradcam", "occlusion"]),
    default="auto",
    show_default=True,
    help="auto: Grad-CAM for a run or .pt, occlusion for an exported model.",
)
@user_errors
def explain(model, inputs, out_dir, method) -> None:
    """Saliency overlays: where MODEL looks in each image (files or folders) for its prediction."""
    from edgecls import api

    explained = api.explain(model, inputs, out_dir=out_dir, method=method)
    for item in explained.overlays:
        out.print(
            f"{item.source}: {item.label} {item.probability:.1%} -> {item.file}",
            highlight=False,
            markup=False,
        )
    for path, reason in explained.skipped:
        err.print(f"skipped {path}: {reason}", highlight=False, markup=False)
    out.print(f"{explained.method}; index: {explained.index}", highlight=False, markup=False)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    required=True,
    type=RegistryChoice(EXPORT_FORMATS),
    help="The format to write (the formats registered in EXPORT_FORMATS).",
)
@click.option("--precision", default="fp32", show_default=True, help="fp32, fp16 or int8.")
@click.option("--int8", "int8", is_flag=True, help="Same as --precision int8.")
@click.option(
    "--out", "out_dir", type=click.Path(path_type=Path), help="Output folder (default: RUN/export)."
)
@click.option(
    "--data",
    help="Data for the checks and INT8 calibration (default: the training "
    "data named in the checkpoint).",
)
@click.option("--calibration-size", type=click.IntRange(min=1), default=300, show_default=True)
@click.option("--seed", type=_config_range("seed"), default=0)
@click.option(
    "--opset",
    type=click.IntRange(min=11, max=20),
    default=17,
    show_default=True,
    help="ONNX opset; 17 is read correctly by every runtime tested (OpenCV DNN included).",
)
@click.option(
    "--max-drop",
    type=click.FloatRange(min=0, max=100),
    help="INT8: points of top-1 it may lose against FP32 (NNCF's accuracy-controlled "
    "quantization); over it, FP32 is recommended instead.",
)
@user_errors
def export(
    model, fmt, precision, int8, out_dir, data, calibration_size, seed, opset, max_drop
) -> None:
    """Export MODEL (run folder or .pt) for a runtime, checked against the checkpoint."""
    from edgecls import api
    from edgecls.deploy.export import report_lines

    report = api.export(
        model,
        fmt,
        "int8" if int8 else precision,
        out_dir=out_dir,
        data=data,
        calibration_size=calibration_size,
        seed=seed,
        opset=opset,
        max_drop=max_drop,
    )
    for line in report_lines(report):
        out.print(line, highlight=False, markup=False)


@main.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--input-size", type=_config_range("input_size"), default=224, show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--backends",
    help="Comma-separated: torch, onnxruntime, openvino, litert, ncnn (default: every one "
    "installed here).",
)
@click.option(
    "--precision",
    "precisions",
    default="fp32",
    show_default=True,
    help="Comma-separated: fp32, bf16 (OpenVINO, if the CPU has it), int8 (ONNX Runtime, "
    "OpenVINO, LiteRT).",
)
@click.option(
    "--max-drop",
    type=click.FloatRange(min=0, max=100),
    default=1.0,
    show_default=True,
    help="Points of top-1 the recommended choice may lose (measured for checkpoints).",
)
@click.option("--repeats", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True)
@click.option(
    "--num-classes",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Classifier size for timm names.",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(path_type=Path),
    default=Path("runs/bench/bench"),
    show_default=True,
    help="Saved as OUT.csv and OUT.json.",
)
@user_errors
def bench(
    models,
    input_size,
    batch,
    backends,
    precisions,
    max_drop,
    repeats,
    warmup,
    num_classes,
    out_path,
):
    """Parameters, GFLOPs, size, memory, latency and FPS of MODELS (timm names, checkpoints,
    exported files) per backend and precision, and the fastest within --max-drop."""
    from edgecls import api
    from edgecls.deploy.bench import format_table

    benchmark = api.bench(
        models,
        input_size=input_size,
        batch=batch,
        backends=backends.split(",") if backends else None,
        precisions=precisions.split(","),
        max_drop=max_drop,
        repeats=repeats,
        warmup=warmup,
        num_classes=num_classes,
        out_path=out_path,
    )
    out.print(format_table(benchmark.rows), highlight=False, markup=False)
    for line in benchmark.fastest:
        out.print(line, highlight=False, markup=False)
    csv_path, json_path = benchmark.saved
    out.print(f"saved {csv_path} and {json_path}", highlight=False, markup=False)
