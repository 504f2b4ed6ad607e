"""The Python API: edgecls.train / load / check_data, Run and Model, on in-memory data."""

import time

import numpy as np
import pytest
from PIL import Image

import edgecls

pytestmark = pytest.mark.slow  # each trains for real

SETTINGS = {"input_size": 16, "max_epochs": 2, "workers": 0, "export": None}


def stripes(label: int, seed: int) -> np.ndarray:
    """A 16x16 grey image whose stripe direction is its class, with noise."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, (16, 16))
    if label == 0:
        pixels[::4] += 180
    elif label == 1:
        pixels[:, ::4] += 180
    else:
        np.fill_diagonal(pixels, 240)
    return pixels.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api")
    pairs = [(stripes(i % 3, i), ["rows", "columns", "diagonal"][i % 3]) for i in range(90)]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        began = time.monotonic()
        run = edgecls.train(
            pairs, recipe="digits", run_dir=folder / "run", progress=False, **SETTINGS
        )
        WALL_SECONDS["trained"] = time.monotonic() - began
    return run, folder


WALL_SECONDS: dict[str, float] = {}


def test_train_on_in_memory_pairs_gives_a_run_with_metrics_and_history(trained):
    run, folder = trained
    assert isinstance(run, edgecls.Run)
    assert 0 <= run.metrics["val"]["top1"] <= 1
    assert set(run.classes) == {"rows", "columns", "diagonal"}
    assert [row["epoch"] for row in run.history] == [1, 2]
    assert {"train_loss", "val_loss", "val_top1", "lr"} <= set(run.history[0])
    written = folder / "runs" / "memory-data"
    (data,) = written.iterdir()  # the pairs, once, as class folders of PNGs
    assert sorted(p.name for p in data.iterdir() if p.is_dir()) == ["columns", "diagonal", "rows"]
    assert run.config["data"] == str(data.relative_to(folder))


def test_metrics_split_the_run_s_wall_time_into_phases(trained):
    run, _ = trained
    phases = run.metrics["phase_seconds"]
    expected = {"startup", "plan", "load", "setup", "train", "validate", "checkpoints"}
    assert expected | {"evaluate", "report"} <= set(phases)
    assert all(seconds >= 0 for seconds in phases.values())
    assert sum(phases.values()) <= WALL_SECONDS["trained"] + 0.1  # each rounded to 0.01 s
    looped = phases["train"] + phases["validate"]  # the epochs, without their bookkeeping
    assert 0.8 * run.metrics["train_seconds"] <= looped <= run.metrics["train_seconds"] + 0.02


def test_the_final_evaluation_reuses_the_loop_s_validation_logits_of_best_pt(
    trained, tmp_path, monkeypatch
):
    """The scores metrics.json has from the loop's logits are those a fresh pass of best.pt over
    validation gives, and given those logits, the final evaluation makes no pass of its own."""
    import shutil

    import torch

    import edgecls.evaluate.checkpoint as final
    from edgecls.config import config_from_dict
    from edgecls.data import load_configured_dataset
    from edgecls.evaluate import compute_metrics
    from edgecls.evaluate.inference import predict_logits
    from edgecls.models import model_from_checkpoint
    from edgecls.runs import load_checkpoint

    run, folder = trained
    config = config_from_dict(run.config)
    monkeypatch.chdir(folder)  # the run's data path is relative to where it was trained
    dataset = load_configured_dataset(config, progress=False)
    model, _ = model_from_checkpoint(load_checkpoint(run.run_dir / "best.pt"))
    model.temperature.fill_(1.0)  # scored before its temperature was fitted
    logits = predict_logits(model, dataset.val.images, config.eval_batch_size)
    fresh = compute_metrics(logits, dataset.val.labels, dataset.classes)
    assert run.metrics["val_top1"] == fresh.top1
    assert abs(run.metrics["val_loss"] - fresh.loss) < 1e-5

    def no_pass(*args, **kwargs):
        raise AssertionError("a second pass over validation")

    shutil.copy(run.run_dir / "best.pt", tmp_path / "best.pt")
    monkeypatch.setattr(final, "predict_logits", no_pass)
    metrics = final.evaluate_best(model, dataset, tmp_path, {}, 64, True, logits)
    assert metrics["val_top1"] == fresh.top1 and metrics["val_loss"] == fresh.loss
    assert torch.equal(torch.tensor(metrics["val"]["confusion"]), torch.tensor(fresh.confusion))


def test_run_predicts_arrays_pil_images_and_paths_alike(trained, tmp_path):
    run, _ = trained
    array = stripes(1, 999)
    path = tmp_path / "one.png"
    Image.fromarray(array).save(path)
    predictions = run.predict([array, Image.fromarray(array), str(path)], top_k=2)
    assert len(predictions) == 3 and all(len(p.labels) == 2 for p in predictions)
    assert predictions[0].labels == predictions[1].labels == predictions[2].labels
    assert predictions[2].path.endswith("one.png") and predictions[0].path == "<image 0>"
    assert sum(predictions[0].probabilities) <= 1.0 + 1e-6


def test_export_and_load_give_the_same_answers(trained, tmp_path):
    run, folder = trained
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # the run's data path is relative to where it trained
        report = run.export("onnx", out_dir=tmp_path)
    assert report.top1_agreement >= 0.99
    model = edgecls.load(tmp_path / "model.onnx")
    assert isinstance(model, edgecls.Model) and model.info.classes == run.classes
    images = [stripes(i % 3, 500 + i) for i in range(6)]
    exported = [p.labels[0] for p in model.predict(images)]
    assert exported == [p.labels[0] for p in run.predict(images)]
    again = edgecls.load(run.run_dir)
    assert isinstance(again, edgecls.Run) and again.metrics == run.metrics


def test_errors_raise_one_exception_type_with_the_cli_message(trained, tmp_path, monkeypatch):
    run, _ = trained
    monkeypatch.chdir(tmp_path)
    with pytest.raises(edgecls.EdgeclsError, match="unknown config key 'max_epoch'"):
        edgecls.train("digits", max_epoch=3)
    with pytest.raises(edgecls.EdgeclsError, match="not an \\(image, label\\) pair"):
        edgecls.train([stripes(0, 0)], recipe="digits")
    with pytest.raises(edgecls.EdgeclsError, match="uint8"):
        run.predict(np.zeros((16, 16), dtype=np.float32))
    with pytest.raises(edgecls.EdgeclsError, match="no model at"):
        edgecls.load(tmp_path / "missing.onnx")


def test_check_data_and_a_torchvision_style_dataset(tmp_path, monkeypatch, capsys):
    class Stripes:  # what torchvision datasets look like: len, [index] -> (image, int), classes
        classes = ["rows", "columns", "diagonal"]

        def __len__(self):
            return 60

        def __getitem__(self, index):
            return Image.fromarray(stripes(index % 3, index)), index % 3

    monkeypatch.chdir(tmp_path)
    run = edgecls.train(Stripes(), recipe="digits", progress=False, **SETTINGS)
    assert set(run.classes) == set(Stripes.classes)
    assert capsys.readouterr().err == ""  # progress=False: nothing printed
    (data,) = (tmp_path / "runs" / "memory-data").iterdir()
    check = edgecls.check_data(data)
    assert check.ok and "diagonal" in str(check)
    (data / "rows" / "broken.png").write_bytes(b"not a png")
    assert "broken.png" in str(edgecls.check_data(data))


def test_the_api_gives_the_cli_metrics_for_the_same_seed(tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from edgecls.cli import main

    monkeypatch.chdir(tmp_path)
    options = [f"{key}={value}" for key, value in SETTINGS.items() if value is not None]
    result = CliRunner().invoke(
        main, ["train", "--recipe", "digits", "--quiet", "--run-dir", "cli", *options]
    )
    assert result.exit_code == 0, result.output
    run = edgecls.train(recipe="digits", run_dir="api", progress=False, **SETTINGS)
    cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    for key in ("val_top1", "val_top5", "val_map", "val_loss", "best_epoch", "epochs_trained"):
        assert run.metrics[key] == cli[key], key
    assert [r["val_loss"] for r in run.history] == [
        r["val_loss"] for r in edgecls.load(tmp_path / "cli").history
    ]
