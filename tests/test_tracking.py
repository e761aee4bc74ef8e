"""``featx classify --mlflow``: one MLflow run per classifier in a real local store, read back
with ``MlflowClient`` equal to featx's own JSON (issue 12). Skipped without featx[mlflow]."""

from __future__ import annotations

import copy
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from realdata import needs_shared, store_of

from featx.cli import build_parser, config_from_args, main
from featx.learn import modelfile
from featx.learn.classification import classify
from featx.learn.tracking import ARTIFACTS, DATABASE, DependencyError, log_results, tracking_uri

mlflow = pytest.importorskip("mlflow", reason="needs featx[mlflow]")
pytest.importorskip("sqlalchemy", reason="needs featx[mlflow]")
from mlflow.tracking import MlflowClient  # noqa: E402


def classifier_runs(cache: Path, experiment: str) -> tuple[Any, list[Any]]:
    """The one parent run of the experiment's (one) command and the runs nested under it."""
    client = MlflowClient(tracking_uri("on", cache))
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id])
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1
    return parent, children


def assert_logged_like_the_json(cache: Path, results: list[dict], experiment: str) -> None:
    client = MlflowClient(tracking_uri("on", cache))
    parent, runs = classifier_runs(cache, experiment)
    assert len(runs) == len(results)  # one nested MLflow run per classifier
    assert parent.info.run_name == results[0]["run"]
    assert parent.data.params["pipeline"] == results[0]["pipeline"]
    by_name = {r.info.run_name: r for r in runs}
    for result in results:
        [json_file] = [Path(f) for f in result["files"] if f.endswith(".json")]
        folder, saved = json_file.parent, json.loads(json_file.read_text())
        run = by_name[f"{saved['run']}/{saved['classifier']}"]
        metrics = run.data.metrics
        for name in ("rank1", "cv_score", "fit_seconds", "splits"):
            assert metrics[name] == pytest.approx(saved[name], rel=1e-12), name
        if saved["rank5"] is None:  # not applicable: not logged as a number
            assert "rank5" not in metrics
        else:
            assert metrics["rank5"] == pytest.approx(saved["rank5"], rel=1e-12)
        params = run.data.params
        assert params["backbone.weights_id"] == saved["backbone"]["weights_id"]
        assert params["backbone.pooling"] == saved["backbone"]["pooling"]
        assert params["classify.quick"] == str(saved["classify"]["quick"])
        for k, v in saved["best_params"].items():
            assert params[f"best.{k.split('__')[-1]}"] == str(v)
        for key, shows in saved["scope"].items():  # what each number shows, as the JSON says
            assert run.data.tags[f"featx.scope.{key}"] == shows
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert artifacts == {Path(f).name for f in saved["files"]}
        assert any(a.endswith(".skops") for a in artifacts)
        assert_model_logged(client, run, folder / saved["model"])
    assert (cache / DATABASE).is_file() and (cache / "mlflow-artifacts").is_dir()


def assert_model_logged(client: MlflowClient, run: Any, model_file: Path) -> None:
    """The run's MLflow model: the scikit-learn flavour saved with skops, which loads with no
    type outside featx's trusted list (no code run) and predicts as featx's own file does."""
    import mlflow.artifacts
    import skops.io as sio
    import yaml

    [output] = run.outputs.model_outputs
    logged = client.get_logged_model(output.model_id)
    assert logged.source_run_id == run.info.run_id
    files = {a.path for a in client.list_logged_model_artifacts(logged.model_id)}
    assert {"MLmodel", "model.skops"} <= files and not any(f.endswith(".pkl") for f in files)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=logged.artifact_location))
    flavour = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["sklearn"]
    assert flavour["serialization_format"] == "skops"
    untrusted = sio.get_untrusted_types(file=local / "model.skops")
    assert set(untrusted) <= set(modelfile.FEATX_TYPES)
    model = sio.load(local / "model.skops", trusted=untrusted)
    featx_model = modelfile.load(model_file)["model"]
    first = getattr(featx_model, "members", [featx_model])[0]  # an ensemble: its first
    x = np.random.default_rng(0).normal(size=(7, first.n_features_in_))
    np.testing.assert_array_equal(model.predict(x), featx_model.predict(x))
    assert run.data.tags["featx.model"].startswith(f"MLflow model {logged.model_id}: ")


@pytest.mark.slow
def test_classify_logs_one_run_per_classifier(tiny_store, make_config, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    config = make_config(tiny_store.root, cache, out=str(tmp_path / "out"),
                         classify={"classifiers": ["logreg", "knn"], "mlflow": "on"})
    results = classify(config, tiny_store.path)
    assert_logged_like_the_json(cache, results, "tiny")


@pytest.mark.slow
@pytest.mark.shared
@needs_shared
def test_flowers17_logged_to_a_local_store(flowers17, tmp_path):  # noqa: F811
    """The real Flowers-17 store: rank-5 applies (17 classes) and is logged."""
    config = copy.deepcopy(flowers17)
    config.out = str(tmp_path / "out")
    cache = tmp_path / "mlflow-cache"
    config.cache_dir = str(cache)
    config.classify.mlflow = "on"
    results = classify(config, store_of(flowers17))
    assert results[0]["rank5"] is not None
    assert_logged_like_the_json(cache, results, config.name)


def test_the_flag_and_the_setting(tmp_path):
    args = build_parser().parse_args(["classify", "--mlflow"])
    assert config_from_args(args).classify.mlflow == "on"
    args = build_parser().parse_args(["classify", "--mlflow", "http://tracker:5000"])
    assert config_from_args(args).classify.mlflow == "http://tracker:5000"
    assert config_from_args(build_parser().parse_args(["classify"])).classify.mlflow == ""
    assert tracking_uri("", tmp_path) is None and tracking_uri("off", tmp_path) is None
    assert tracking_uri("on", tmp_path) == f"sqlite:///{(tmp_path / DATABASE).resolve()}"
    assert tracking_uri("true", tmp_path) == tracking_uri("on", tmp_path)
    assert tracking_uri("sqlite:///x.db", tmp_path) == "sqlite:///x.db"


def test_without_mlflow_installed_it_is_one_line(tiny_store, make_config, tmp_path,
                                                  monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    code = main(["classify", "--store", str(tiny_store.path), "--data", str(tiny_store.root),
                 "--classifiers", "logreg", "--out", str(tmp_path / "out"), "--mlflow"])
    assert code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert err == ["featx: error: --mlflow needs MLflow: pip install 'featx[mlflow]'"]
    assert not (tmp_path / "out").exists()  # said before fitting anything
    with pytest.raises(DependencyError):
        log_results("sqlite:///unused.db", "x", [])


def test_repeated_splits_logged_as_mean_sd_and_each_split_with_quiet_mlflow(tmp_path,
                                                                             monkeypatch):
    """Three splits of a synthetic store, two learners and their ensemble: each nested run
    holds the mean, sd and number of splits, each split's rank-1 as the steps of a metric,
    each split's chosen parameters, and its model as a skops MLflow model. MLflow's INFO
    lines (a new database: "Creating initial MLflow database tables...") only with -v."""
    from test_repeats import config, synthetic

    from featx.core.log import set_level

    store = synthetic(tmp_path, "s", signal=1.0)
    records: list[logging.LogRecord] = []
    seen = logging.Handler()
    seen.emit = records.append
    logging.getLogger("mlflow").addHandler(seen)
    cache = tmp_path / "cache"
    try:
        c = config(tmp_path, "out", repeats=3, classifiers=["logreg", "knn"], ensemble=True,
                   mlflow="on")
        c.cache_dir = str(cache)
        results = classify(c, store)
        assert not [r for r in records if r.levelno < logging.WARNING], records
        old = set_level(logging.DEBUG)  # featx -v
        try:
            (tmp_path / "other").mkdir()
            log_results(tracking_uri("on", tmp_path / "other"), "x", [])  # a new database
        finally:
            set_level(old)
        assert any(r.levelno == logging.INFO for r in records)
    finally:
        logging.getLogger("mlflow").removeHandler(seen)
    assert_logged_like_the_json(cache, results, results[0]["pipeline"])
    client = MlflowClient(tracking_uri("on", cache))
    parent, runs = classifier_runs(cache, results[0]["pipeline"])
    assert parent.data.params["splits"] == "3" and "best.C" not in parent.data.params
    by_name = {r.info.run_name.split("/", 1)[1]: r for r in runs}
    for result in results:
        run = by_name[result["classifier"]]
        assert run.data.metrics["splits"] == 3
        assert run.data.metrics["rank1"] == pytest.approx(np.mean(result["repeats"]["rank1"]))
        assert run.data.metrics["rank1_std"] == pytest.approx(
            np.std(result["repeats"]["rank1"], ddof=1))
        history = client.get_metric_history(run.info.run_id, "rank1_by_split")
        assert sorted((m.step, m.value) for m in history) == [
            (s["split"], pytest.approx(s["rank1"])) for s in result["per_split"]]
        assert run.data.params["split_seeds"] == "42,43,44"
        assert run.data.params["best_by_split"].startswith("42: ")
        assert run.data.tags["featx.scope.rank1"] == "mean ± sd over 3 splits (seeds 42–44)"
        assert "± " in run.data.tags["mlflow.note.content"]
    # an MLflow whose scikit-learn flavour cannot save skops: featx's file only, and why
    import mlflow.sklearn

    monkeypatch.setattr(mlflow.sklearn, "SUPPORTED_SERIALIZATION_FORMATS",
                        ["pickle", "cloudpickle"])
    log_results(tracking_uri("on", cache), "older", results[:1])
    _, [run] = classifier_runs(cache, "older")
    assert not run.outputs.model_outputs
    assert run.data.tags["featx.model"].startswith(f"featx's {results[0]['model']} among the "
                                                   "artifacts only")
    assert "run code when loaded" in run.data.tags["featx.model"]
    assert results[0]["model"] in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_a_local_database_keeps_its_artifacts_beside_it(tmp_path, monkeypatch):
    """MLflow's own default for a SQLite store is ./mlruns: artifacts in whatever folder the
    command ran in. Beside the database instead, whoever calls log_results."""
    from mlflow.tracking import MlflowClient

    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    uri = tracking_uri("on", tmp_path / "cache")
    log_results(uri, "beside", [])
    found = MlflowClient(uri).get_experiment_by_name("beside")
    assert found.artifact_location == (tmp_path / "cache" / ARTIFACTS).resolve().as_uri()
    assert not list(elsewhere.iterdir())
