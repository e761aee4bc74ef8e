"""``featx classify --mlflow``: one MLflow run per classifier in a real local store, read back
with ``MlflowClient`` equal to featx's own JSON (issue 12). Skipped without featx[mlflow]."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
from realdata import needs_shared, store_of

from featx.cli import build_parser, config_from_args, main
from featx.learn.classification import classify
from featx.learn.tracking import DATABASE, DependencyError, tracking_uri

mlflow = pytest.importorskip("mlflow", reason="needs featx[mlflow]")
pytest.importorskip("sqlalchemy", reason="needs featx[mlflow]")
from mlflow.tracking import MlflowClient  # noqa: E402


def assert_logged_like_the_json(cache: Path, results: list[dict], experiment: str) -> None:
    client = MlflowClient(tracking_uri("on", cache))
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id])
    assert len(runs) == len(results)  # one MLflow run per classifier
    by_name = {r.info.run_name: r for r in runs}
    for result in results:
        folder = Path(result["files"][0]).parent
        saved = json.loads((folder / f"{result['pipeline']}-{result['classifier']}.json")
                           .read_text())
        run = by_name[f"{saved['run']}/{saved['classifier']}"]
        metrics = run.data.metrics
        for name in ("rank1", "cv_score", "fit_seconds"):
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
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert artifacts == {Path(f).name for f in saved["files"]}
        assert any(a.endswith(".skops") for a in artifacts)
    assert (cache / DATABASE).is_file() and (cache / "mlflow-artifacts").is_dir()


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
        from featx.learn.tracking import log_results

        log_results("sqlite:///unused.db", "x", [])
