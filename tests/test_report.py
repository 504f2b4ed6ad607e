"""report.html / report.md, calibration (ECE, temperature scaling) and confident mistakes."""

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch

from edgecls.evaluate.calibration import expected_calibration_error, fit_temperature, reliability


def test_temperature_scaling_lowers_the_ece_of_an_over_confident_model():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (2000,), generator=generator)
    honest = torch.randn(2000, 5, generator=generator)
    honest[torch.arange(2000), labels] += 1.5  # about 60% right
    over_confident = honest * 6  # same ranking, far too sure
    before = expected_calibration_error(over_confident, labels)
    temperature = fit_temperature(over_confident, labels)
    after = expected_calibration_error(over_confident / temperature, labels)
    assert 2 < temperature < 10  # it undoes most of the 6x that was applied
    assert before > 0.2 and after < 0.05 and after < before / 4
    bins = reliability(over_confident, labels)
    assert sum(bins.count) == 2000 and bins.ece == pytest.approx(before)


@pytest.mark.slow
def test_a_run_writes_a_self_contained_report_with_every_section(tracked_run):
    run, _ = tracked_run
    folder = run.run_dir
    page = (folder / "report.html").read_text()
    for section in (
        "Summary",
        "Plan and configuration",
        "Data audit",
        "Training curves",
        "Confusion matrix",
        "Per class",
        "Most confident mistakes",
        "Saliency maps",
        "Calibration",
        "Deployment",
    ):
        assert f"<h2>{section}" in page
    assert 'src="data:image/png;base64,' in page and "<script" not in page
    assert "<th>batch-1 ms</th>" in page and "model.onnx" in page  # the exports' latency
    assert "http://" not in page and "https://" not in page  # opens offline
    markdown = (folder / "report.md").read_text()
    assert "## Calibration" in markdown and "![reliability diagram](reliability.png)" in markdown
    metrics = json.loads((folder / "metrics.json").read_text())
    temperature = metrics["calibration"]["temperature"]
    assert torch.load(folder / "best.pt", weights_only=False)["temperature"] == temperature
    assert metrics["mistakes"] and {"source", "true", "predicted", "confidence"} <= set(
        metrics["mistakes"][0]
    )
    exported = json.loads((folder / "export" / "model.json").read_text())
    assert exported["temperature"] == pytest.approx(temperature)  # in the export's metadata


def test_every_run_audits_its_data_and_reports_the_leaks(tracked_run):
    """audit=leaks by default: audit.json, .csv and .html in the run folder, and report.html
    lists each group of copies that spans splits (the embedded digits hold such pairs)."""
    folder = tracked_run[0].run_dir
    audit = json.loads((folder / "audit.json").read_text())
    assert {"duplicates", "label_issues", "outliers"} <= set(audit)
    assert (folder / "audit.csv").is_file() and (folder / "audit.html").is_file()
    leaks = [group for group in audit["duplicates"] if group["leak"]]
    assert leaks, "the embedded digits have near-identical images across train and val"
    page = (folder / "report.html").read_text()
    assert f"<td>groups across splits (leaks)</td><td>{len(leaks)}</td>" in page
    for group in leaks[:10]:
        assert group["paths"][0] in page
    assert "not searched (audit=leaks)" in page
    assert "digits is built in: its splits stay as they are" in page  # no --fix-splits advice


def test_leak_advice_names_the_folder_to_re_split(tmp_path):
    from edgecls.report.html import leak_advice

    assert leak_advice(str(tmp_path)).startswith(f"edgecls check-data {tmp_path} --audit")


@pytest.mark.slow
def test_predict_returns_the_calibrated_probabilities(tracked_run):
    from edgecls.deploy.runtime import OnnxPredictor, TorchPredictor

    run, _ = tracked_run
    checkpoint = TorchPredictor(run.run_dir)
    temperature = checkpoint.info.temperature
    assert temperature != 1.0
    images = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8)
    raw = TorchPredictor(run.run_dir).model
    raw.temperature.fill_(1.0)  # the logits as trained
    with torch.no_grad():
        expected = torch.softmax(raw(images.float() / 255) / temperature, 1).numpy()
    assert np.allclose(checkpoint.predict_proba(images), expected, atol=1e-5)
    onnx = OnnxPredictor(run.run_dir / "export" / "model.onnx")
    assert np.allclose(onnx.predict_proba(images), expected, atol=1e-4)


@pytest.mark.slow
def test_the_report_renders_in_a_headless_browser(tracked_run, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; CI installs it)")
    from PIL import Image

    run, _ = tracked_run
    shot = tmp_path / "report.png"
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        f"--screenshot={shot}", "--window-size=1100,2400", (run.run_dir / "report.html").as_uri(),
    ]  # fmt: skip
    subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert shot.is_file() and shot.stat().st_size > 10_000
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.std() > 10  # text, tables and figures drawn, not a blank page


def test_each_corruption_changes_the_images_and_severity_5_changes_them_most():
    from edgecls.evaluate.robustness import CORRUPTIONS, corrupt

    images = torch.randint(40, 216, (4, 1, 32, 32), dtype=torch.uint8)
    for name in CORRUPTIONS:
        mild = (corrupt(images, name, 1).float() - images.float()).abs().mean()
        severe = (corrupt(images, name, 5).float() - images.float()).abs().mean()
        assert corrupt(images, name, 3).shape == images.shape
        assert 0 < mild < severe, name
    assert torch.equal(corrupt(images, "fog", 2, seed=1), corrupt(images, "fog", 2, seed=1))


@pytest.mark.slow
def test_corruptions_at_severity_5_lower_accuracy_and_the_report_shows_them(digits_run):
    from click.testing import CliRunner

    from edgecls.cli import main

    result = CliRunner().invoke(
        main,
        ["eval", str(digits_run), "digits", "--corruptions", "--reference", str(digits_run),
         "--corruption-images", "100"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    robustness = json.loads((digits_run / "eval" / "robustness.json").read_text())
    assert robustness["images"] == 100
    mean_at_5 = np.mean([row["top1"][4] for row in robustness["corruptions"].values()])
    assert mean_at_5 < robustness["clean_top1"]
    assert robustness["mce"] == pytest.approx(1.0) and robustness["mfr"] == pytest.approx(1.0)
    assert set(robustness["flip_rates"]) == {"gaussian_noise", "translate", "brightness"}
    assert "<h2>Robustness" in (digits_run / "report.html").read_text()
    bad = CliRunner().invoke(main, ["eval", str(digits_run), "digits", "--reference", "x"])
    assert bad.exit_code == 2 and "--corruptions" in bad.output
