"""MkDocs hooks: the configuration reference from `edgecls.config.describe_keys()`, and the files
of `benchmarks/results/` published as pages under `results/`.

Listed in mkdocs.yml under `hooks:`. Kept small: a key without help text gets an empty cell.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

MARKER = "<!-- config-reference -->"
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def _cell(value: object) -> str:
    """One table cell: on one line, with `|`, backticks and `<` escaped so they stay text."""
    text = "" if value is None else " ".join(str(value).split())
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")
    return text.replace("<", "&lt;")


def _code(value: object) -> str:
    """A cell as code, unless it holds what a code span cannot escape."""
    text = "" if value is None else " ".join(str(value).split())
    if not text or "|" in text or "`" in text:
        return _cell(text)
    return f"`{text}`"


def config_table() -> str:
    from edgecls.config import describe_keys  # imported here: the build's PYTHONPATH has the repo

    rows = [
        "| key | type | default | allowed | what it does |",
        "|---|---|---|---|---|",
    ]
    for key in describe_keys():
        default = "null" if key.default is None else key.default
        if isinstance(default, bool):
            default = str(default).lower()
        rows.append(
            f"| {_code(key.name)} | {_cell(key.type)} | {_code(default)} "
            f"| {_cell(key.allowed)} | {_cell(key.help)} |"
        )
    return "\n".join(rows)


def on_files(files, config):
    """Every benchmarks/results/*.md (except its README) as the page results/<name>.md."""
    for path in sorted(RESULTS.glob("*.md")):
        if path.name == "README.md":
            continue
        files.append(File.generated(config, f"results/{path.name}", abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, config_table())
    return markdown
