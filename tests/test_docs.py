"""The documentation: the MkDocs site builds with no warning (`--strict`), its generated
configuration reference holds the declared keys, and the README stays short."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 250


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


@pytest.mark.slow
def test_site_builds_strictly_with_generated_references(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("mkdocstrings_handlers.python")
    pytest.importorskip("mkdocs_click")
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    config = (site / "reference" / "config" / "index.html").read_text(encoding="utf-8")
    assert "config-reference" not in config  # the marker was replaced
    for key in ("lr_search_storage", "time_budget", "schedule", "max_epochs"):
        assert f"<code>{key}</code>" in config, key
    assert "plateau_v2" in config  # an allowed value, from the declarations

    cli = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    for command in ("edgecls train", "edgecls export", "edgecls predict", "--resume"):
        assert command in cli, command

    api = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("train", "load", "check_data", "Run"):
        assert f'id="edgecls.api.{name}"' in api, name

    assert (site / "results" / "tricks" / "index.html").is_file()  # benchmarks/results published
