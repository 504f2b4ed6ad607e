"""User strings reach every writer escaped for its format: class names with `$`, `<`, `|` or a
leading `=` give a finished run, a report that shows them as text, and CSV cells no spreadsheet
runs. Property-based: hypothesis throws generated names at each writer."""

import csv
import html
import json
import re
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from sklearn.datasets import load_digits

import edgecls
from edgecls import runs
from edgecls.config import Config
from edgecls.report import escape
from edgecls.report.compare import markdown_table, save_comparison
from edgecls.report.html import Page
from edgecls.report.plots import plot_confusion_matrix, plot_mistakes

NASTY = ["cost_$x^$", "<img src=x onerror=alert(1)>", "=HYPERLINK(1)", "a|b *c* [d](e)"]
NAMES = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)


def unescaped_html(markdown: str) -> list[str]:
    return re.findall(r"<[A-Za-z/!]", markdown)


@settings(max_examples=300, deadline=None)
@given(name=NAMES)
def test_markdown_text_is_one_line_with_no_html_and_no_bare_pipe(name):
    text = escape.markdown(name)
    assert "\n" not in text and "\r" not in text
    assert not unescaped_html(text)
    assert not re.search(r"(?<!\\)\|", text), text


@settings(max_examples=300, deadline=None)
@given(name=NAMES)
def test_no_csv_cell_starts_a_formula(name):
    cell = escape.csv_cell(name)
    assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
    assert cell.removeprefix("'") == name or cell == name


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(names=st.lists(NAMES, min_size=2, max_size=4, unique=True))
def test_plots_draw_any_class_name(names, tmp_path):
    confusion = np.eye(len(names), dtype=int).tolist()
    assert plot_confusion_matrix(confusion, names, tmp_path / "c.png").stat().st_size > 0
    thumbnails = np.zeros((2, 1, 8, 8), dtype=np.uint8)
    plot_mistakes(thumbnails, names[:2], names[::-1][:2], [0.9, 0.8], tmp_path / "m.png")


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(names=st.lists(NAMES, min_size=1, max_size=3))
def test_report_tables_and_comparisons_hold_names_as_text(names, tmp_path):
    page = Page()
    page.heading(names[0])
    page.paragraph(names[-1])
    page.table(["class", "recall"], [[name, "1.0"] for name in names])
    markdown = "\n".join(page.markdown)
    assert not unescaped_html(markdown)
    for name in names:
        assert html.escape(name) in "\n".join(page.html) or "\n" in name or "\r" in name
    row = {
        "run": names[0], "data": names[-1], "model": "m", "recipe": "-", "split": "val",
        "top1": 0.5, "top5": 1.0, "map": 0.7, "epochs": 1, "wall_s": 1.0, "latency_ms": None,
        "config": {"input_size": 16},
    }  # fmt: skip
    assert not unescaped_html(markdown_table([row], []))
    save_comparison([row], [], tmp_path / "cmp")
    with open(tmp_path / "cmp" / "compare.csv", newline="") as handle:
        cells = [cell for line in csv.reader(handle) for cell in line]
    assert not any(cell.startswith(("=", "+", "-", "@")) for cell in cells)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=NAMES, model=NAMES)
def test_run_folder_names_are_safe_file_names(data, model, tmp_path):
    path = runs.auto_run_dir(Config(data=data, model=model), root=tmp_path)
    assert path.parent == tmp_path
    assert set(path.name) <= set(string.ascii_letters + string.digits + "_.-")
    path.mkdir()  # a name the file system takes


@pytest.mark.slow
def test_a_run_on_classes_with_hostile_names_finishes_with_escaped_output(tmp_path):
    digits = load_digits()
    data = tmp_path / "data"
    for index, name in enumerate(NASTY):
        (data / name).mkdir(parents=True)
        for number, pixels in enumerate(digits.images[digits.target == index][:12]):
            image = Image.fromarray((pixels * 255 / 16).astype(np.uint8))
            image.save(data / name / f"{number}.png")
    run = edgecls.train(
        str(data), recipe="digits", run_dir=tmp_path / "run", progress=False, input_size=16,
        max_epochs=2, workers=0,
    )  # fmt: skip
    assert sorted(run.classes) == sorted(NASTY)
    report = (run.run_dir / "report.md").read_text()
    assert not unescaped_html(report)
    assert "<img src=x" not in (run.run_dir / "report.html").read_text()
    assert json.loads((run.run_dir / "metrics.json").read_text())["val"]["classes"] == run.classes
    from click.testing import CliRunner

    from edgecls.cli import main

    table = tmp_path / "predictions.csv"
    image = data / NASTY[2] / "0.png"
    result = CliRunner().invoke(
        main, ["predict", str(run.run_dir), str(image), "--csv", str(table)]
    )
    assert result.exit_code == 0, result.output
    with open(table, newline="") as handle:
        cells = [cell for row in csv.reader(handle) for cell in row]
    assert "'" + NASTY[2] in cells and NASTY[2] not in cells  # quoted, never a formula
