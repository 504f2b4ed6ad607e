"""Saliency maps: `edgecls explain` on a checkpoint and on an ONNX export, the report's section,
bad input, and the maps pointing where the class is decided (the pointing game)."""

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

import edgecls.models  # noqa: F401  (registers the CIFAR ResNets with timm)
from edgecls.cli import main
from edgecls.data import ImageSplit, load_image, to_pixels
from edgecls.deploy.explain import saliency_maps
from edgecls.deploy.runtime import load_predictor
from edgecls.evaluate.saliency import (
    explain_run,
    gradcam,
    log_odds,
    occlusion,
    peak_in_box,
    target_layer,
)
from edgecls.report.html import write_report
from edgecls.report.saliency import overlay


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def fails_cleanly(*args, contains: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0, result.output
    assert contains in result.output


@pytest.fixture(scope="module")
def digit_files(digit_folder) -> list[Path]:
    return [
        digit_folder / "3" / "0.png",
        digit_folder / "7" / "1.png",
        digit_folder / "0" / "2.png",
    ]


def fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.mark.slow  # reads the trained digits run
def test_explain_a_checkpoint_writes_an_enlarged_overlay_per_image(
    digits_run, digit_folder, tmp_path
):
    before = fingerprint(digit_folder)
    out = tmp_path / "out"
    result = invoke(
        "explain", digits_run / "best.pt", digit_folder / "3", digit_folder / "7", "--out", out
    )
    assert result.exit_code == 0, result.output
    overlays = sorted(out.glob("*.png"))
    assert len(overlays) == 24  # 12 images per class folder
    for path in overlays:
        with Image.open(path) as image:
            assert image.size == (160, 160) and image.mode == "RGB"  # 32 px x 5
        assert re.fullmatch(r"\d{3}_\d+_pred-\d_\d+pct", path.stem), path.name
    page = (out / "explain.html").read_text()
    assert page.count("<img ") == 24 and "Grad-CAM on blocks.0 (8 x 8)" in page
    assert "Grad-CAM" in result.output and str(out / "explain.html") in result.output
    assert fingerprint(digit_folder) == before  # the user's images only read
    again = invoke("explain", digits_run, digit_folder / "3", "--out", out)  # its own folder again
    assert again.exit_code == 0, again.output


@pytest.mark.slow  # reads the trained digits run
def test_explain_an_onnx_export_by_occlusion_matches_the_checkpoint(
    digits_run, digit_files, tmp_path
):
    onnx = digits_run / "export" / "model.onnx"
    result = invoke("explain", onnx, *digit_files, "--out", tmp_path / "onnx")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "onnx").glob("*.png"))) == 3
    assert "occlusion (4 px squares, stride 2) in onnxruntime" in result.output
    # The same method through the checkpoint gives the same maps: the runtime is used correctly.
    pixels = np.stack([to_pixels(load_image(p, grayscale=True), 32) for p in digit_files])
    targets = [3, 7, 0]
    exported, _ = saliency_maps(load_predictor(onnx), pixels, targets, "occlusion")
    checkpoint, _ = saliency_maps(load_predictor(digits_run), pixels, targets, "occlusion")
    np.testing.assert_allclose(exported, checkpoint, atol=0.05)  # float rounding, scaled up
    fails_cleanly(
        "explain", onnx, *digit_files, "--out", tmp_path / "x", "--method", "gradcam",
        contains="Grad-CAM needs gradients",
    )  # fmt: skip


@pytest.mark.slow  # reads the trained digits run
def test_the_run_report_shows_saliency_maps_of_mistakes_and_of_each_class(digits_run):
    saliency = json.loads((digits_run / "metrics.json").read_text())["saliency"]
    assert saliency["method"] == "Grad-CAM on blocks.0 (8 x 8)" and saliency["split"] == "val"
    assert len(saliency["correct"]) == 10  # one per digit
    assert all(row["true"] == row["predicted"] for row in saliency["correct"])
    assert 0 < len(saliency["mistakes"]) <= 8
    assert all(row["true"] != row["predicted"] for row in saliency["mistakes"])
    assert saliency["seconds"] < 10
    write_report(digits_run)  # rebuilt from the folder's files, as eval and bench do
    page = (digits_run / "report.html").read_text()
    section = page[page.index("<h2>Saliency maps") :]
    assert section.count("data:image/png;base64") >= 2
    assert (digits_run / "saliency_correct.png").is_file()


def test_a_run_whose_model_cannot_be_explained_says_why_and_keeps_its_report(tmp_path, capsys):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))  # no convolutional stage
    split = ImageSplit(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]), [])
    probabilities = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    saliency = explain_run(model, split, probabilities, ["a", "b"], tmp_path)
    assert saliency == {"skipped": "UserError: Sequential has no convolutional stage for "
                        "Grad-CAM: use --method occlusion"}  # fmt: skip
    printed = capsys.readouterr()
    assert "saliency maps skipped: UserError: Sequential" in printed.out + printed.err


@pytest.mark.slow  # reads the trained digits run
def test_bad_input_is_one_line_and_exit_2(digits_run, digit_files, tmp_path):
    out = tmp_path / "out"
    fails_cleanly("explain", tmp_path / "none.pt", *digit_files, "--out", out, contains="none.pt")
    fails_cleanly(
        "explain", tmp_path / "none.onnx", *digit_files, "--out", out, contains="no model"
    )
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    fails_cleanly("explain", digits_run, broken, "--out", out, contains="could be read")
    (tmp_path / "empty").mkdir()
    fails_cleanly("explain", digits_run, tmp_path / "empty", "--out", out, contains="no images")
    fails_cleanly("explain", digits_run, tmp_path / "nope", "--out", out, contains="nope")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    fails_cleanly(
        "explain", digits_run, *digit_files, "--out", tmp_path / "mine", contains="other files"
    )
    images = tmp_path / "images"
    images.mkdir()
    Image.open(digit_files[0]).save(images / "a.png")
    fails_cleanly(
        "explain", digits_run, images, "--out", images / "out", contains="inside the image folder"
    )
    assert not out.exists() and (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_tiny_images_are_enlarged_with_square_pixels_and_large_ones_kept():
    heat = np.zeros((8, 8), np.float32)
    heat[2, 5] = 1
    small = overlay(np.full((1, 8, 8), 100, np.uint8), heat)
    assert small.shape == (160, 160, 3)
    assert np.unravel_index(small[..., 0].argmax(), (160, 160))[0] // 20 == 2  # red where hot
    assert overlay(np.zeros((3, 200, 200), np.uint8), np.zeros((200, 200))).shape == (200, 200, 3)


@pytest.mark.parametrize(
    ("model", "size", "layer", "side"),
    [
        ("resnet20_cifar", 32, "stages.8", 8),  # the last stage
        ("mobilenetv3_small_100", 32, "blocks.0", 8),  # its last stage would be 1 x 1
        ("mobilenetv3_small_100", 224, "blocks.5", 7),  # the last stage, as usual at 224 px
        ("mobilenetv3_small_100", 16, "bn1", 8),  # nothing 7 wide but the stem: the widest
    ],
)
def test_grad_cams_layer_is_the_deepest_stage_at_least_7_wide(model, size, layer, side):
    network = timm.create_model(model, num_classes=3)
    chosen = target_layer(network, size, 3)
    assert (chosen.name, chosen.side) == (layer, side)


SIDE, PATCH = 16, 4


def patch_set(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """16 px noise, a 4 x 4 red (class 0) or green (class 1) square and a white one elsewhere."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 0.4, (count, 3, SIDE, SIDE)).astype(np.float32)
    labels = rng.integers(0, 2, count)
    boxes = np.zeros((count, 4), np.int64)
    for index, label in enumerate(labels):
        while True:
            x, y, u, v = rng.integers(0, SIDE - PATCH + 1, 4)
            if abs(x - u) >= PATCH or abs(y - v) >= PATCH:
                break
        images[index, :, y : y + PATCH, x : x + PATCH] = 0.1
        images[index, label, y : y + PATCH, x : x + PATCH] = 0.9
        images[index, :, v : v + PATCH, u : u + PATCH] = 1.0
        boxes[index] = (x, y, x + PATCH, y + PATCH)
    return torch.from_numpy(images), torch.from_numpy(labels), boxes


class TinyNet(nn.Module):
    """Two convolutions at full resolution, global average pooling, a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.feature_info = [{"module": "features", "reduction": 1, "num_chs": 8}]
        self.fc = nn.Linear(8, 2)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(pixels).mean(dim=(2, 3)))


def test_saliency_peaks_inside_the_patch_that_decides_the_class():
    torch.manual_seed(0)
    images, labels, _ = patch_set(512, seed=0)
    model = TinyNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        batch = torch.randint(0, len(images), (64,))
        loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test_images, test_labels, boxes = patch_set(100, seed=1)
    with torch.no_grad():
        assert (model(test_images).argmax(1) == test_labels).float().mean() >= 0.95
    targets = test_labels.tolist()
    maps = gradcam(model, test_images, targets, target_layer(model, SIDE, 3))
    assert maps.shape == (100, SIDE, SIDE) and maps.max() == pytest.approx(1.0)
    assert peak_in_box(maps, boxes).mean() >= 0.8

    def probabilities(pixels: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(pixels)).softmax(1).numpy()

    maps = occlusion(probabilities, test_images.numpy(), targets)
    assert peak_in_box(maps, boxes).mean() >= 0.8


def test_pointing_game_reads_rows_and_columns_the_right_way_round():
    maps = np.zeros((2, 10, 10), np.float32)
    maps[0, 1, 7] = 1  # row 1, column 7
    maps[1, 7, 1] = 1
    box = [6, 0, 9, 3]  # left, top, right, bottom
    assert peak_in_box(maps, np.array([box, box])).tolist() == [True, False]


def test_occlusion_still_sees_a_change_when_the_top_probability_has_rounded_to_1():
    saturated = np.array([[1.0, 1e-9, 3e-9]], np.float32)  # a calibrated, very sure model
    occluded = np.array([[1.0, 1e-6, 3e-6]], np.float32)  # the same, its evidence covered
    assert saturated[0, 0] == occluded[0, 0]
    assert log_odds(saturated)[0, 0] - log_odds(occluded)[0, 0] == pytest.approx(np.log(1000))
    assert log_odds(np.array([[0.2, 0.8]]))[0] == pytest.approx([np.log(0.25), np.log(4)])
