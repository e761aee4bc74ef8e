"""Optional MLflow logging of ``featx classify`` (``pip install 'featx[mlflow]'``).

``featx classify --mlflow [URI]`` or ``classify.mlflow`` in a pipeline logs, into the
experiment named after the pipeline, one parent run per command (named after its run folder,
with the settings its classifiers share) and nested under it one run per classifier (MLflow's
``mlflow.parentRunId`` tag, as ``mlflow.start_run(nested=True)`` sets it):

- parameters: the backbone settings with the weights identity, the grid point chosen
  (``best.*``; with repeated splits each split's under ``best_by_split``), the classify
  settings, the number of splits and their seeds;
- metrics: rank-1 and rank-5 (the mean over the splits), ``rank1_std`` and ``rank5_std``
  (their sd, with repeated splits), ``splits``, each split's rank-1/rank-5 as the steps of
  ``rank1_by_split``/``rank5_by_split`` (step = split number), the cross-validated score and
  fit seconds;
- tags ``featx.scope.<key>`` saying what each number shows (one split, the mean ± sd over R
  splits, or split 1 of R) and a description (``mlflow.note.content``);
- artifacts: the reports, charts and featx's own model file (``featx predict`` reads it);
- the model as an MLflow model (scikit-learn flavour) saved in the skops format, which loads
  no code (pickle, MLflow's other formats, runs whatever the file names); where this MLflow
  cannot save skops, only featx's ``.skops`` file, and the tag ``featx.model`` says why.

Without a URI, a local store under the cache folder (``mlflow.db``, SQLite, with
``mlflow-artifacts/`` beside it): it works offline. MLflow's own INFO lines ("Creating
initial MLflow database tables...") are shown only when featx's are at debug level (-v).
"""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from featx.core.errors import DependencyError
from featx.core.files import installed_version
from featx.core.log import HANDLER
from featx.learn import modelfile
from featx.report.results import headline

ON = ("on", "true", "yes", "1")  # classify.mlflow values meaning "the default local store"
DATABASE = "mlflow.db"
ARTIFACTS = "mlflow-artifacts"
METRICS = ("rank1", "rank5", "rank1_std", "rank5_std", "splits", "cv_score", "fit_seconds")
MODEL = "model"  # the name of a classifier run's MLflow model


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
    """One parent MLflow run for the command and one nested run per result (a classify
    result dict as written to its JSON, with its ``files``); returns the nested runs' ids,
    in ``results`` order. ``artifacts_dir``: where a new experiment keeps its artifacts
    (None: beside a local SQLite database, else the tracking server's choice: MLflow's own
    default for SQLite, ``./mlruns``, would scatter them into whatever folder the command
    ran in)."""
    if artifacts_dir is None and uri.startswith("sqlite:///"):
        artifacts_dir = Path(uri[len("sqlite:///"):]).parent / ARTIFACTS
    try:
        mlflow = require()  # importing it sets its loggers' levels: quiet them after
        with _mlflow_quiet():
            client, entities = mlflow.tracking.MlflowClient(uri), mlflow.entities
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else client.create_experiment(
                experiment, artifact_location=artifacts_dir.resolve().as_uri()
                if artifacts_dir else None)
            if not results:
                return []
            run_name = str(results[0].get("run"))
            parent = client.create_run(experiment_id, run_name=run_name,
                                       tags={"featx.run": run_name,
                                             "featx.classifiers": ", ".join(
                                                 r["classifier"] for r in results)})
            parent_id = parent.info.run_id
            client.log_batch(parent_id, params=[entities.Param(k, v) for k, v in
                                                shared_params(results).items()])
            ids = [_log_result(client, entities, experiment_id, parent_id, result)
                   for result in results]
            client.set_terminated(parent_id)
            return ids
    except DependencyError:
        raise
    except Exception as e:  # MLflow raises its own and its stores' errors
        raise DependencyError(f"MLflow at {uri}: {type(e).__name__}: {e}") from None


def _log_result(client: Any, entities: Any, experiment_id: str, parent_id: str,
                result: dict[str, Any]) -> str:
    """The nested run of one classifier's result; returns its id."""
    rank1, rank5, note = headline(result)
    scores = rank1 if result.get("rank5") is None else f"{rank1} · {rank5}"
    tags = {"mlflow.parentRunId": parent_id, "featx.run": str(result.get("run")),
            "featx.store_key": str(result.get("key")),
            "mlflow.note.content": f"{result['classifier']}: {scores}. {note}",
            **{f"featx.scope.{k}": v for k, v in (result.get("scope") or {}).items()}}
    by_split = "each split's, step = split number (its seed: split_seeds, in order)"
    tags |= {f"featx.scope.{k}_by_split": by_split for k in ("rank1", "rank5")}
    run = client.create_run(experiment_id, run_name=f"{result.get('run')}/"
                            f"{result['classifier']}", tags=tags)
    run_id, now = run.info.run_id, int(time.time() * 1000)
    metrics = [entities.Metric(name, float(result[name]), now, 0) for name in METRICS
               if isinstance(result.get(name), (int, float))]
    for split in result.get("per_split") or []:  # each split's score, step = split number
        metrics += [entities.Metric(f"{k}_by_split", float(split[k]), now, int(split["split"]))
                    for k in ("rank1", "rank5") if isinstance(split.get(k), (int, float))]
    client.log_batch(run_id, metrics=metrics,
                     params=[entities.Param(k, v) for k, v in params(result).items()])
    for path in result.get("files", []):
        client.log_artifact(run_id, path)
    model_file = next((p for p in result.get("files", []) if p.endswith(modelfile.SUFFIX)),
                      None)
    note = (log_model(client, experiment_id, run_id, Path(model_file), result)
            if model_file else "no model saved (a [combine] pipeline's needs every member's "
            "features)")
    client.set_tag(run_id, "featx.model", note)
    client.set_terminated(run_id)
    return run_id


def log_model(client: Any, experiment_id: str, run_id: str, model_file: Path,
              result: dict[str, Any]) -> str:
    """The classifier in featx's ``model_file`` logged as an MLflow model of run ``run_id``
    (scikit-learn flavour, skops format: loading it runs no code); returns the note saying
    what was logged, or why only ``model_file`` was (it is among the run's artifacts)."""
    import mlflow.sklearn
    import skops.io as sio
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model

    if "skops" not in getattr(mlflow.sklearn, "SUPPORTED_SERIALIZATION_FORMATS", ()):
        return (f"featx's {model_file.name} among the artifacts only: this MLflow's "
                "scikit-learn flavour cannot save the skops format, and its pickle formats "
                "run code when loaded")
    bundle = modelfile.load(model_file)  # refuses any type featx does not trust
    model = bundle["model"]
    # the types beyond skops' defaults that this model holds (all of featx's trusted list)
    trusted = sio.get_untrusted_types(data=sio.dumps(model))
    logged = client.create_logged_model(
        experiment_id, name=re.sub(r"[/:.%\"']", "_", str(result["classifier"])),
        source_run_id=run_id, model_type="featx classifier",
        params={k: v for k, v in params(result).items() if k.startswith("best.")})
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    versions = bundle.get("versions") or {}
    requirements = [f"{name}=={versions[name]}" for name in modelfile.CHECKED_VERSIONS
                    if versions.get(name)] + [f"skops=={installed_version('skops')}"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / MODEL
        mlflow.sklearn.save_model(
            model, str(path), serialization_format="skops", skops_trusted_types=trusted,
            pip_requirements=requirements,  # given: inferring them would load the model
            mlflow_model=Model(artifact_path=logged.artifact_location, run_id=run_id,
                               model_uuid=logged.model_id, model_id=logged.model_id),
            metadata={"featx_label_names": list(bundle.get("label_names") or []),
                      "featx_input": f"feature vectors of store key {result.get('key')} "
                                     "(featx extract)",
                      "featx_scope": (result.get("scope") or {}).get("model", "one split")})
        client.log_model_artifacts(logged.model_id, str(path))
    client.finalize_logged_model(logged.model_id, "READY")
    return (f"MLflow model {logged.model_id}: scikit-learn flavour, skops format (loads no "
            f"code; trusted types in its MLmodel); featx predict reads {model_file.name}")


def params(result: dict[str, Any]) -> dict[str, str]:
    """A result's MLflow parameters: ``backbone.*``, ``best.*`` (the grid point chosen;
    split 1's with repeated splits, each split's in ``best_by_split``), ``classify.*`` (the
    settings), the dataset, the pipeline, ``splits`` and ``split_seeds``."""
    out = {"dataset": str(result.get("dataset")), "pipeline": str(result.get("pipeline"))}
    for prefix, values in (("backbone", result.get("backbone")),
                           ("best", {k.split("__")[-1]: v
                                     for k, v in (result.get("best_params") or {}).items()}),
                           ("classify", result.get("classify"))):
        for k, v in (values or {}).items():
            out[f"{prefix}.{k}"] = _text(v)
    splits = result.get("per_split") or []
    if splits:
        out["splits"] = str(len(splits))
        out["split_seeds"] = ",".join(str(s["seed"]) for s in splits)
    if len(splits) > 1:
        out["best_by_split"] = "; ".join(
            f"{s['seed']}: " + ", ".join(f"{k.split('__')[-1]}={v}"
                                         for k, v in (s.get("best_params") or {}).items())
            for s in splits)
    return out


def shared_params(results: list[dict[str, Any]]) -> dict[str, str]:
    """The parameters every result of a command has alike (the parent run's)."""
    each = [params(r) for r in results]
    return {k: v for k, v in each[0].items() if all(p.get(k) == v for p in each[1:])
            and not k.startswith("best")}


def _text(v: Any) -> str:
    return ",".join(map(str, v)) if isinstance(v, list) else str(v)


@contextlib.contextmanager
def _mlflow_quiet() -> Iterator[None]:
    """MLflow's own INFO lines (its logger has a stderr handler of its own) hidden inside the
    block unless featx's messages are at debug level (-v), also when featx is used as a
    library (the command line's featx.core.log.console does as much for every command)."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    if HANDLER.level > logging.DEBUG:
        logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def require() -> Any:
    """The ``mlflow`` module, or a DependencyError saying how to install it (checked before a
    run starts, not after its fits)."""
    try:
        import mlflow.entities
        import mlflow.tracking
    except ImportError:
        raise DependencyError("--mlflow needs MLflow: pip install 'featx[mlflow]'") from None
    return mlflow
