"""Optional MLflow logging of ``featx classify`` (``pip install 'featx[mlflow]'``).

``featx classify --mlflow [URI]`` or ``classify.mlflow`` in a pipeline logs one MLflow run
per classifier into the experiment named after the pipeline: parameters (the backbone
settings with the weights identity, the best grid point, the classify settings), metrics
(rank-1, rank-5 where it applies, the cross-validated score, fit seconds) and artifacts
(the reports, charts and the model file). Without a URI, a local store under the cache
folder (``mlflow.db``, SQLite, with ``mlflow-artifacts/`` beside it): it works offline.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from featx.core.errors import DependencyError

ON = ("on", "true", "yes", "1")  # classify.mlflow values meaning "the default local store"
DATABASE = "mlflow.db"
ARTIFACTS = "mlflow-artifacts"
METRICS = ("rank1", "rank5", "cv_score", "fit_seconds")



def tracking_uri(setting: str, cache_dir: Path) -> str | None:
    """The URI ``classify.mlflow`` asks for: None (off), the local default, or as given."""
    setting = setting.strip()
    if not setting or setting.lower() in ("off", "false", "no", "0"):
        return None
    if setting.lower() in ON:
        return f"sqlite:///{(Path(cache_dir) / DATABASE).resolve()}"
    return setting


def log_results(uri: str, experiment: str, results: list[dict[str, Any]],
                artifacts_dir: Path | None = None) -> list[str]:
    """One MLflow run per result (a classify result dict as written to its JSON); returns
    their run ids. ``artifacts_dir``: where a new experiment keeps its artifacts (None:
    the tracking server's choice)."""
    try:
        client, entities = _mlflow(uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(
            experiment, artifact_location=artifacts_dir.resolve().as_uri()
            if artifacts_dir else None)
        ids, now = [], int(time.time() * 1000)
        for result in results:
            run = client.create_run(experiment_id, run_name=f"{result.get('run')}/"
                                    f"{result['classifier']}",
                                    tags={"featx.run": str(result.get("run")),
                                          "featx.store_key": str(result.get("key"))})
            run_id = run.info.run_id
            client.log_batch(run_id, metrics=[
                entities.Metric(name, float(result[name]), now, 0) for name in METRICS
                if isinstance(result.get(name), (int, float))],
                params=[entities.Param(k, v) for k, v in params(result).items()])
            for path in result.get("files", []):
                client.log_artifact(run_id, path)
            client.set_terminated(run_id)
            ids.append(run_id)
        return ids
    except DependencyError:
        raise
    except Exception as e:  # MLflow raises its own and its stores' errors
        raise DependencyError(f"MLflow at {uri}: {type(e).__name__}: {e}") from None


def params(result: dict[str, Any]) -> dict[str, str]:
    """A result's MLflow parameters: ``backbone.*``, ``best.*`` (the grid point chosen),
    ``classify.*`` (the settings) and the dataset."""
    out = {"dataset": str(result.get("dataset")), "pipeline": str(result.get("pipeline"))}
    for prefix, values in (("backbone", result.get("backbone")),
                           ("best", {k.split("__")[-1]: v
                                     for k, v in (result.get("best_params") or {}).items()}),
                           ("classify", result.get("classify"))):
        for k, v in (values or {}).items():
            out[f"{prefix}.{k}"] = ",".join(map(str, v)) if isinstance(v, list) else str(v)
    return out


def require() -> Any:
    """The ``mlflow`` module, or a DependencyError saying how to install it (checked before a
    run starts, not after its fits)."""
    try:
        import mlflow.entities
        import mlflow.tracking
    except ImportError:
        raise DependencyError("--mlflow needs MLflow: pip install 'featx[mlflow]'") from None
    return mlflow


def _mlflow(uri: str) -> tuple[Any, Any]:
    mlflow = require()
    return mlflow.tracking.MlflowClient(uri), mlflow.entities
