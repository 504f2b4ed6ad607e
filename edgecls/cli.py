"""The `edgecls` command line: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import sys
from pathlib import Path
from typing import NoReturn

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgecls import config as cfg
from edgecls import runs
from edgecls.errors import UserError
from edgecls.redact import redact

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def fail(message: str) -> NoReturn:
    """How every bad input ends: one line on stderr (as plain text, not markup), exit status 2;
    under torchrun, from rank 0 only (every rank meets the same problem)."""
    if os.environ.get("RANK", "0") == "0":
        err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
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


def _without_option(argv: list[str], option: str) -> list[str]:
    """`argv` less `option VALUE` or `option=VALUE`."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(f"{option}="):
            kept.append(arg)
    return kept


def _print_summary(metrics: dict, run_dir: Path) -> None:
    table = Table(title="edgecls train: best checkpoint", show_header=False)
    table.add_row("best epoch", f"{metrics['best_epoch']} of {metrics['epochs_trained']} trained")
    table.add_row("stopped early", "yes" if metrics["stopped_early"] else "no (max epochs)")
    for split in ("val", "test"):
        if f"{split}_top1" in metrics:
            table.add_row(
                f"{split} top-1 / top-5 / mAP",
                f"{metrics[f'{split}_top1']:.2%} / {metrics[f'{split}_top5']:.2%} / "
                f"{metrics[f'{split}_map']:.4f}",
            )
            table.add_row(
                f"{split} balanced accuracy",
                f"{metrics[split]['balanced_accuracy']:.2%} (mean per-class recall)",
            )
    if metrics.get("balance", "none") != "none":
        table.add_row("class balance", str(metrics["balance"]))
    for rollback in metrics["rollbacks"]:
        table.add_row(
            f"rollback at epoch {rollback['epoch']}",
            f"{rollback['reason']}; back to epoch {rollback['resumed_from_epoch']}, "
            f"LR x {rollback['lr_scale']:g}",
        )
    for resumed in metrics["resumes"]:
        changes = ", ".join(f"{k}={redact(v)}" for k, v in resumed["overrides"].items())
        table.add_row(f"resumed after epoch {resumed['epoch']}", changes or "as saved")
    table.add_row("training time", f"{metrics['train_seconds']:.0f} s")
    if metrics["skipped_files"]:
        table.add_row("skipped files", f"{metrics['skipped_files']} (see skipped_files.txt)")
    table.add_row("run folder", str(run_dir))
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
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--plan", "plan_only", is_flag=True, help="Print the plan for DATA and exit.")
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    help="Train in N processes on this machine (DDP through torchrun; batch_size is per process).",
)
@user_errors
def train(args, recipe, run_dir, overwrite, resume, quiet, plan_only, nproc, **options) -> None:
    """Train on DATA (default: the built-in digits) with optional key=value overrides.

    DATA is a folder (train/ val/ [test/] of class folders, or just class folders), a CSV/TXT
    list of path,label, or a built-in name (digits, mnist5k, fashion-mnist, cifar10, ...).
    """
    from edgecls.api import configure
    from edgecls.plan.table import plan_tables
    from edgecls.training import distributed
    from edgecls.training import train as run_training

    if nproc and nproc > 1 and not plan_only and not distributed.under_torchrun():
        sys.exit(distributed.launch(nproc, _without_option(sys.argv[1:], "--nproc")))
    started = runs.process_started()
    world = distributed.join()
    data, overrides = _split_args(args)
    plan = None
    if resume:
        if data or recipe or any(v is not None for v in options.values()) or run_dir:
            raise UserError(
                "--resume continues a run with its saved config; only key=value overrides of "
                f"{', '.join(cfg.RESUME_KEYS)} may be added"
            )
        config, changed = cfg.resume_config(
            runs.read_config(resume), cfg.parse_overrides(overrides)
        )
        run_dir = resume
    else:
        cli_values = {k: v for k, v in options.items() if v is not None}
        if "lr" in cli_values:
            cli_values["lr"] = cfg.parse_overrides([f"lr={cli_values['lr']}"])["lr"]
        user_values = {**cfg.parse_overrides(overrides), **cli_values}
        if world.main:  # the others wait for its plan
            config, plan = configure(data, recipe, user_values, started)
        config, plan = world.share((config, plan) if world.main else None)
        if plan is not None and plan.candidates and world.main:
            for table in plan_tables(plan):
                out.print(table)
        if plan_only:
            if plan is None:
                raise UserError("--plan plans a run for DATA without a recipe")
            return
        changed = {}
    try:
        run = run_training(
            config,
            run_dir,
            resume=resume is not None,
            overwrite=overwrite,
            resume_overrides=changed,
            progress=not quiet,
            started=started,
            plan=plan.to_dict() if plan else None,
            world=world,
        )
    except RuntimeError as error:
        if not distributed.lost_a_process(error):
            raise
        if world.main:
            err.print(
                "error: another training process of this run stopped; the last checkpoint is "
                "intact: continue with edgecls train --resume RUN_FOLDER",
                highlight=False,
            )
        sys.exit(1)
    if world.main:
        _print_summary(run.metrics, run.run_dir)


@main.command("lr-find", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1)
@click.option("--recipe", help="Recipe name or YAML file (model, input size, ...).")
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
    from edgecls.data import load_configured_dataset
    from edgecls.training.lr_search import run_workers, search_lr, shared_storage, storage_url

    data, overrides = _split_args(args)
    layers = [cfg.load_recipe(recipe) if recipe else {}, cfg.parse_overrides(overrides)]
    layers.append(
        {"lr": method, **({"model": model} if model else {}), **({"data": data} if data else {})}
    )
    config = cfg.build_config(*layers)
    if config.data is None:
        raise UserError("lr-find needs DATA (or a recipe that names one)")
    if workers > 1 and method == "range":
        raise UserError("--workers runs trials in parallel: use it with --method tpe or grid")
    out_dir = out_dir or runs.auto_run_dir(config, prefix="lr-find")
    runs.check_folder_writable(out_dir)
    config = shared_storage(config, out_dir, workers)
    arguments = [a for a in args if not a.startswith("lr_search_storage=")]
    command = ["lr-find", *arguments, "--method", method, "--quiet"]
    command += [*(["--recipe", recipe] if recipe else []), *(["--model", model] if model else [])]
    storage = storage_url(config)
    with run_workers(
        command, out_dir, workers - 1, storage
    ):  # they start while this one loads the data
        dataset = load_configured_dataset(config, progress=not quiet)
        result = search_lr(config, dataset, out_dir, progress=not quiet, worker=worker_index)
    runs.write_json(out_dir / "lr_search.json", result.to_dict())
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
        f"details in {out_dir}",
        highlight=False,
    )


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1)
@click.option(
    "--recipe", required=True, help="The recipe the tricks are added to (or left out of)."
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
    import time

    from edgecls.ablate import ablate as run_ablation
    from edgecls.ablate import parse_stack

    data, overrides = _split_args(args)
    tricks = parse_stack(stack)
    values = {**cfg.parse_overrides(overrides), **({"data": data} if data else {})}
    base = cfg.build_config(cfg.load_recipe(recipe), values)
    if base.data is None:
        base = dataclasses.replace(base, data=cfg.DEFAULT_DATA)
    name = Path(recipe).stem
    out_dir = out_dir or Path("runs") / f"ablate-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir} is not empty: name another --out")
    run_ablation(
        base, name, tricks, out_dir, leave_one_out=leave_one_out, seeds=seeds, progress=not quiet
    )
    out.print((out_dir / "ablation.md").read_text(), highlight=False, markup=False)
    out.print(f"wrote {out_dir}/ablation.md, ablation.csv, ablation.png", highlight=False)


@main.command("check-data")
@click.argument("data")
@click.option("--input-size", type=_config_range("input_size"), default=64, show_default=True)
@click.option("--grayscale", is_flag=True)
@click.option("--val-fraction", type=_config_range("val_fraction"), default=0.2, show_default=True)
@click.option("--data-root", type=click.Path())
@click.option("--seed", type=_config_range("seed"), default=0)
@user_errors
def check_data(data, input_size, grayscale, val_fraction, data_root, seed) -> None:
    """Show what was found in DATA, per split and class, and every problem."""
    from edgecls.data import describe, load_dataset

    dataset = load_dataset(
        data,
        input_size=input_size,
        grayscale=grayscale,
        val_fraction=val_fraction,
        seed=seed,
        data_root=data_root,
        strict=False,
    )
    out.print(describe(dataset), highlight=False, markup=False)
    if dataset.fatal:
        sys.exit(2)


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
    from edgecls.report.compare import compare_runs, markdown_table, save_comparison

    folders = []
    for path in run_dirs:
        if path.is_dir() and not runs.is_run_folder(path) and runs.holds_run_folders(path):
            folders += sorted(child for child in path.iterdir() if runs.is_run_folder(child))
        else:
            folders.append(path)
    runs.check_folder_writable(out_dir)
    rows, differing = compare_runs(folders, sort)
    out.print(markdown_table(rows, differing), highlight=False, markup=False, soft_wrap=True)
    saved = save_comparison(rows, differing, out_dir)
    out.print(f"saved {' and '.join(map(str, saved))}", highlight=False, markup=False)


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
    from edgecls.evaluate import format_metrics
    from edgecls.evaluate.checkpoint import evaluate_checkpoint

    if out_dir:
        runs.check_folder_writable(out_dir)
    if reference is not None and not corruptions:
        raise UserError("--reference is the model mCE is relative to: add --corruptions")
    split_name, metrics, saved = evaluate_checkpoint(
        model,
        data,
        split=split,
        out_dir=out_dir,
        data_root=data_root,
        corruptions=corruptions,
        reference=reference,
        corruption_images=corruption_images,
    )
    out.print(
        format_metrics(metrics, title=f"{data} ({split_name})"), highlight=False, markup=False
    )
    if corruptions:
        result = runs.read_json(saved / "robustness.json")
        out.print(result["summary"], highlight=False, markup=False)
        for name, row in result["corruptions"].items():
            cells = " ".join(f"{100 * t:5.1f}" for t in row["top1"])
            out.print(f"  {name:<15} top-1 % at severity 1-5: {cells}", highlight=False)
    out.print(f"saved to {saved}", highlight=False, markup=False)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), help="Also write a CSV.")
@user_errors
def predict(model, inputs, top_k, csv_path) -> None:
    """Top-k labels with probabilities for images or folders of images."""
    from edgecls.deploy.predict import predict_images, write_predictions_csv

    if csv_path:
        runs.check_folder_writable(csv_path.parent)
    predictions, skipped = predict_images(model, list(inputs), top_k)
    if not predictions:
        path, reason = skipped[0]
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise UserError(f"none of the given images could be read: {path}: {reason}{more}")
    for p in predictions:
        labels = ", ".join(
            f"{lab} {prob:.1%}" for lab, prob in zip(p.labels, p.probabilities, strict=True)
        )
        out.print(f"{p.path}: {labels}", highlight=False, markup=False)
    for path, reason in skipped:
        err.print(f"skipped {path}: {reason}", highlight=False, markup=False)
    if csv_path:
        write_predictions_csv(predictions, csv_path)
        out.print(f"wrote {csv_path}", highlight=False, markup=False)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--format", "fmt", required=True, help="onnx, openvino, torchscript, tflite, ncnn or coreml."
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
    from edgecls.deploy.export import export_model, report_lines

    if out_dir:
        runs.check_folder_writable(out_dir)
    precision = "int8" if int8 else precision
    report = export_model(
        model, fmt, precision, out_dir, data, calibration_size, seed, opset, max_drop
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
    from edgecls.deploy.bench import (
        bench_model,
        check_choices,
        fastest_lines,
        format_table,
        installed_backends,
        save_rows,
    )

    backends = backends or ",".join(installed_backends())
    check_choices(backends.split(","), precisions.split(","))
    runs.check_folder_writable(out_path.parent)
    rows = []
    for spec in models:
        err.print(f"benchmarking {spec} ...", highlight=False, markup=False)
        rows += bench_model(
            spec,
            backends.split(","),
            precisions.split(","),
            input_size,
            batch,
            repeats,
            warmup,
            num_classes,
        )
    out.print(format_table(rows), highlight=False, markup=False)
    for line in fastest_lines(rows, max_drop):
        out.print(line, highlight=False, markup=False)
    csv_path, json_path = save_rows(rows, out_path)
    out.print(f"saved {csv_path} and {json_path}", highlight=False, markup=False)
