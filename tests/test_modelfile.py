"""Model files that run no code when loaded (issue 12): skops with featx's trusted types; a
pickle only when trusted; library versions recorded and compared."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from helpers import blobs
from sklearn.preprocessing import FunctionTransformer

from featx.cli import main
from featx.learn import learners, modelfile
from featx.learn.modelfile import FEATX_TYPES, ModelFileError, ModelFileWarning


class CreatesFile:
    """Unpickled, it calls ``open(path, "w")``: any code could stand there."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture
def evil_pickle(tmp_path) -> tuple[Path, Path]:
    """A model file that creates ``marker`` when loaded, and the marker's path."""
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "shared-by-a-colleague.joblib"
    path.write_bytes(pickle.dumps({"model": CreatesFile(marker), "label_names": ["a"],
                                   "pipeline": {}}))
    return path, marker


def test_a_pickle_is_refused_and_never_run(evil_pickle, tmp_path):
    path, marker = evil_pickle
    with pytest.raises(ModelFileError, match="refused.*pickle.*--trust"):
        modelfile.load(path)
    assert not marker.exists()
    renamed = tmp_path / "looks-safe.skops"  # judged by content, not by name
    renamed.write_bytes(path.read_bytes())
    with pytest.raises(ModelFileError, match="refused"):
        modelfile.load(renamed)
    assert not marker.exists()
    # the control: the file really runs code once trusted (and says so)
    with pytest.warns(ModelFileWarning) as caught:
        modelfile.load(path, trust=True)
    assert any("pickle/joblib file because you said you trust" in str(w.message)
               for w in caught)
    assert marker.exists()


def test_featx_predict_refuses_a_pickle_in_one_line(evil_pickle, tmp_path, capsys):
    path, marker = evil_pickle
    assert main(["predict", str(path), str(tmp_path / "photo.jpg")]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("featx: error:"), err
    assert str(path) in lines[0] and "--trust" in lines[0]
    assert not marker.exists()
    # --trust: loaded (it is no featx bundle: an error) after a one-line warning
    assert main(["predict", "--trust", str(path), str(tmp_path / "photo.jpg")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("featx: warning:") and "you said you trust it" in err[0]
    assert marker.exists()


def test_a_skops_file_with_an_untrusted_type_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned.txt"
    model = FunctionTransformer(os.system, kw_args={"command": f"touch {marker}"})
    path = tmp_path / "crafted.skops"
    path.write_bytes(sio.dumps({"model": model, "label_names": ["a"], "pipeline": {}}))
    with pytest.raises(ModelFileError, match=r"refused: .*\(posix\.system\)"):
        modelfile.load(path)
    assert main(["predict", str(path), str(tmp_path / "photo.jpg")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("featx: error:") and "posix.system" in err and err.count("\n") == 1
    assert not marker.exists()


# 120 rows of 6 separated classes in 8 dimensions (float32, as a store holds them).
SIX = {"n_classes": 6, "n": 120, "d": 8, "spread": 4.0, "dtype": np.float32}


def _every_model() -> dict[str, object]:
    """Every learner, balanced too, every feature normalisation (classify.normalize), and
    an ensemble holding a calibrated linear SVM."""
    x, y = blobs(**SIX)
    models = {}
    for name in learners.LEARNERS:
        for weight in ("", "balanced"):
            models[f"{name}:{weight}"] = learners.fit(name, x, y, cv=2, class_weight=weight,
                                                      quick=True).model
    for kind in ("l2", "power", "pca_whiten"):
        models[f"logreg:{kind}"] = learners.fit("logreg", x, y, cv=2, quick=True,
                                                normalize=kind).model
    calibrated = learners.with_probabilities(models["linear_svm:"], x, y, cv=2)
    models["ensemble"] = learners.ProbabilityAverage([models["logreg:"], calibrated,
                                                      models["knn:"]])
    return models


@pytest.fixture(scope="module")
def every_model():
    return _every_model()


def test_every_model_round_trips_with_the_same_top_k(every_model, tmp_path):
    x_new, _ = blobs(seed=5, **SIX)
    for name, model in every_model.items():
        before = learners.class_scores(model, x_new)
        path = modelfile.save(tmp_path / f"{name.replace(':', '-')}.skops",
                              {"model": model, "label_names": list("abcdef"), "pipeline": {}})
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # same versions: no warning
            loaded = modelfile.load(path)["model"]
        after = learners.class_scores(loaded, x_new)
        np.testing.assert_allclose(after, before, rtol=1e-6, err_msg=name)
        top5 = np.argsort(-before, axis=1, kind="stable")[:, :5]
        assert (np.argsort(-after, axis=1, kind="stable")[:, :5] == top5).all(), name


def test_the_trusted_list_is_exactly_what_featx_saves(every_model):
    """No type is trusted that no featx model needs (nor one missing: the round trip)."""
    needed = set()
    for model in every_model.values():
        needed |= set(sio.get_untrusted_types(data=sio.dumps({"model": model})))
    old = {t for t in FEATX_TYPES if t.startswith("featx.learners.")}  # files saved by 0.4
    assert needed == set(FEATX_TYPES) - old
    # each 0.4 name is the very type now saved under featx.learn.learners
    assert {t.replace("featx.learners.", "featx.learn.learners.") for t in old} <= needed
    import featx.learn.learners
    import featx.learners

    for t in old:
        name = t.rsplit(".", 1)[1]
        assert getattr(featx.learners, name) is getattr(featx.learn.learners, name)


def test_versions_are_recorded_and_a_mismatch_is_a_warning(tmp_path, monkeypatch):
    x, y = blobs(**SIX)
    model = learners.fit("logreg", x, y, cv=2, quick=True).model
    path = modelfile.save(tmp_path / "m.skops", {"model": model})
    recorded = sio.load(path, trusted=list(FEATX_TYPES))["versions"]
    now = modelfile.versions()
    assert recorded == {k: now[k] for k in ("featx", "scikit-learn", "numpy")}
    older = {**now, "scikit-learn": "1.4.0"}
    monkeypatch.setattr(modelfile, "versions", lambda: older)
    modelfile.save(path, {"model": model})
    monkeypatch.undo()
    with pytest.warns(ModelFileWarning) as caught:
        modelfile.load(path)
    (message,) = [str(w.message) for w in caught]
    assert f"scikit-learn 1.4.0, loaded with scikit-learn {now['scikit-learn']}" in message
