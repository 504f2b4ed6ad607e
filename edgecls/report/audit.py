"""The data audit's files: audit.json, audit.csv and a self-contained audit.html.

Takes plain data (the audit's JSON payload and thumbnails by path), so the report layer needs
nothing from evaluate/. The HTML inlines every thumbnail as a base64 PNG and runs no script.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from edgecls import runs
from edgecls.report import escape
from edgecls.report.html import STYLE

SHOWN_GROUPS = 100  # at most this many duplicate groups, label issues and outliers in the page
THUMBNAIL_SIDE = 64
CSV_COLUMNS = ["finding", "group", "path", "split", "given", "suggested", "score"]
EXTRA_STYLE = """
.group { display: flex; flex-wrap: wrap; gap: .5em; margin: .3em 0 1em; }
.tile { font-size: .75em; width: 96px; overflow-wrap: anywhere; }
.tile img { width: 96px; height: 96px; image-rendering: pixelated; border: 1px solid #ccc; }
.leak { color: #b00; font-weight: bold; }
"""


def write_audit(
    out_dir: Path, payload: dict[str, Any], thumbnails: dict[str, np.ndarray]
) -> list[Path]:
    """audit.json (the payload as it is), audit.csv (one row per image in a finding) and
    audit.html (thumbnails of each group, suspected label and outlier) in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "audit.json", out_dir / "audit.csv", out_dir / "audit.html"]
    runs.write_json(written[0], payload)
    runs.atomic_write_bytes(written[1], lambda tmp: _write_csv(Path(tmp), payload))
    runs.write_text(written[2], _page(payload, thumbnails))
    return written


def csv_rows(payload: dict[str, Any]) -> list[list[Any]]:
    """One row per image of each finding; duplicate groups numbered from 1."""
    rows: list[list[Any]] = []
    for number, group in enumerate(payload["duplicates"], 1):
        finding = f"{group['kind']} duplicate" + (" (leak)" if group.get("leak") else "")
        for path, split in zip(group["paths"], group["splits"], strict=True):
            rows.append([finding, number, path, split, "", "", ""])
    for issue in payload["label_issues"]:
        rows.append(
            ["label issue", "", issue["path"], issue["split"], issue["given"], issue["suggested"]]
            + [issue["score"]]
        )
    for outlier in payload["outliers"]:
        rows.append([f"outlier ({outlier['kind']})", "", outlier["path"], outlier["split"]])
        rows[-1] += ["", "", outlier["score"]]
    return rows


def _write_csv(path: Path, payload: dict[str, Any]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        writer.writerows([escape.csv_cell(cell) for cell in row] for row in csv_rows(payload))


def _png(pixels: np.ndarray) -> str:
    """uint8 (C, H, W) as a base64 PNG of THUMBNAIL_SIDE."""
    from PIL import Image

    array = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
    image = Image.fromarray(np.ascontiguousarray(array))
    if max(image.size) > THUMBNAIL_SIDE:
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _tile(path: str, caption: str, thumbnails: dict[str, np.ndarray]) -> str:
    image = ""
    if path in thumbnails:
        image = (
            f'<img alt="{html.escape(path)}" src="data:image/png;base64,{_png(thumbnails[path])}">'
        )
    return f'<div class="tile">{image}<br>{html.escape(caption)}<br>{html.escape(path)}</div>'


def _duplicates(payload: dict[str, Any], thumbnails: dict[str, np.ndarray]) -> list[str]:
    groups = payload["duplicates"]
    parts = [f"<h2>Duplicates ({len(groups)} groups)</h2>"]
    if not groups:
        parts.append("<p>No exact or near duplicates.</p>")
    for number, group in enumerate(groups[:SHOWN_GROUPS], 1):
        leak = ' <span class="leak">across splits</span>' if group.get("leak") else ""
        parts.append(f"<h3>{number}. {html.escape(group['kind'])}{leak}</h3><div class='group'>")
        parts += [
            _tile(path, split, thumbnails)
            for path, split in zip(group["paths"], group["splits"], strict=True)
        ]
        parts.append("</div>")
    return parts


def _singles(
    title: str, items: list[dict[str, Any]], caption, thumbnails: dict[str, np.ndarray]
) -> list[str]:
    parts = [f"<h2>{html.escape(title)} ({len(items)})</h2>", "<div class='group'>"]
    parts += [_tile(item["path"], caption(item), thumbnails) for item in items[:SHOWN_GROUPS]]
    return [*parts, "</div>"]


def _page(payload: dict[str, Any], thumbnails: dict[str, np.ndarray]) -> str:
    images = ", ".join(f"{split} {count}" for split, count in payload["images"].items())
    leaks = sum(1 for group in payload["duplicates"] if group.get("leak"))
    parts = [
        f"<p>Images: {html.escape(images)}. Duplicate groups: {len(payload['duplicates'])}, "
        f"{leaks} of them across splits. Likely label errors: {len(payload['label_issues'])}. "
        f"Outliers: {len(payload['outliers'])}. Only the first {SHOWN_GROUPS} of each are "
        "shown; audit.json and audit.csv list them all.</p>",
        *(f"<p>{html.escape(note)}</p>" for note in payload.get("notes", [])),
        *_duplicates(payload, thumbnails),
        *_singles(
            "Likely label errors, most suspect first",
            payload["label_issues"],
            lambda i: f"{i['split']}: {i['given']} -> {i['suggested']}? p={i['score']:.3f}",
            thumbnails,
        ),
        *_singles(
            "Outliers",
            payload["outliers"],
            lambda o: f"{o['split']}: {o['kind']} ({o['score']:g})",
            thumbnails,
        ),
    ]
    title = "edgecls data audit"
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{STYLE}{EXTRA_STYLE}</style></head><body><h1>{title}</h1>"
        + "\n".join(parts)
        + "</body></html>\n"
    )


def write_audit_of(out_dir: Path, payload: dict[str, Any], splits: dict[str, Any]) -> list[Path]:
    """`write_audit` with the thumbnails taken from the decoded splits (ImageSplit by name)."""
    wanted = shown_paths(payload)
    thumbnails = {
        source: split.pixels[row]
        for split in splits.values()
        if split is not None
        for row, source in enumerate(split.sources)
        if source in wanted
    }
    return write_audit(out_dir, payload, thumbnails)


def shown_paths(payload: dict[str, Any]) -> set[str]:
    """The paths audit.html shows, whose thumbnails the caller passes."""
    paths = {p for group in payload["duplicates"][:SHOWN_GROUPS] for p in group["paths"]}
    paths |= {issue["path"] for issue in payload["label_issues"][:SHOWN_GROUPS]}
    return paths | {outlier["path"] for outlier in payload["outliers"][:SHOWN_GROUPS]}
