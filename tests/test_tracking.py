"""TensorBoard and MLflow tracking: what a run writes there, read back with their own readers."""

import importlib.util

import pytest

import edgecls

pytestmark = pytest.mark.slow  # each trains for real

SETTINGS = {"input_size": 16, "max_epochs": 3, "workers": 0}


def test_tensorboard_holds_the_epochs_the_confusion_matrix_and_the_hyperparameters(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = tracked_run
    events = EventAccumulator(str(run.run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    for tag, column in [("val/top1", "val_top1"), ("train/loss", "train_loss"), ("lr", "lr")]:
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [row["epoch"] for row in run.history]
        assert [s.value for s in scalars] == pytest.approx([row[column] for row in run.history])
    assert "confusion/val" in events.Tags()["images"]
    hparams = EventAccumulator(str(run.run_dir / "tensorboard" / "hparams"))
    hparams.Reload()
    (final,) = hparams.Scalars("final/val_top1")
    assert final.value == pytest.approx(run.metrics["val_top1"])


def test_mlflow_holds_params_epochs_final_metrics_and_the_run_folder(tracked_run):
    import mlflow

    run, folder = tracked_run
    uri = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    (logged,) = client.search_runs([client.get_experiment_by_name("edgecls").experiment_id])
    assert logged.info.run_name == "run" and logged.info.status == "FINISHED"
    assert logged.data.params["model"] == "mobilenetv3_small_100"
    assert logged.data.params["max_epochs"] == "3"
    history = client.get_metric_history(logged.info.run_id, "val_top1")
    assert [m.step for m in history] == [1, 2, 3]
    assert [m.value for m in history] == pytest.approx([r["val_top1"] for r in run.history])
    assert logged.data.metrics["final_val_top1"] == pytest.approx(run.metrics["val_top1"])
    names = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert {"metrics.json", "best.pt", "config.yaml", "export"} <= names
    assert "last.pt" not in names
    exported = {a.path for a in client.list_artifacts(logged.info.run_id, "export")}
    assert "export/model.onnx" in exported


def test_no_tracker_holds_the_storage_password(tmp_path, monkeypatch):
    """Params and hparams are built from the config: a storage password must not reach them."""
    pytest.importorskip("tensorboard", reason="the tracking extra is not installed")
    pytest.importorskip("mlflow", reason="the tracking extra is not installed")
    from edgecls.config import build_config
    from edgecls.training.tracking import MLflowTracker, TensorBoardTracker

    monkeypatch.chdir(tmp_path)
    storage = "postgresql://bob:s3/cr3t@db.example:5432/studies?password=s3cr3t2"
    config = build_config({"lr_search_storage": storage, "mlflow": True})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    metrics = {"val": {"confusion": [[1]], "classes": ["a"]}, "epochs_trained": 1, "val_top1": 1.0}
    for tracker in (TensorBoardTracker(run_dir, config), MLflowTracker(run_dir, config)):
        tracker.finish(run_dir, metrics)
        tracker.close()
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert any("tensorboard" in p.parts for p in written) and any(
        p.suffix == ".db" for p in written
    )
    for path in written:
        data = path.read_bytes()
        assert b"s3/cr3t" not in data and b"s3cr3t2" not in data, path
    assert any(b"bob:***@db.example" in path.read_bytes() for path in written)


def test_a_tracking_uri_is_used_and_a_missing_extra_is_one_line(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the tracking extra is not installed")
    import mlflow

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    edgecls.train("digits", recipe="digits", progress=False, mlflow=uri, **SETTINGS)
    client = mlflow.MlflowClient(uri)
    assert len(client.search_runs([client.get_experiment_by_name("edgecls").experiment_id])) == 1
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()  # not the default store

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "tensorboard" else real(name, *a),
    )
    with pytest.raises(edgecls.EdgeclsError, match=r'pip install "edgecls\[tracking\]"'):
        edgecls.train("digits", recipe="digits", run_dir=tmp_path / "r", tensorboard=True)
    assert not (tmp_path / "r").exists()  # refused before the run folder was written
