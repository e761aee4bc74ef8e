"""Model files that run no code when loaded: the skops format, read with the exact list of
types featx trusts.

A joblib/pickle file can run any code when it is loaded (scikit-learn's own documentation
says so and points to skops). featx saves ``.skops`` files and loads them with skops' own
trusted types (scikit-learn estimators, numpy arrays, Python builtins) plus
:data:`FEATX_TYPES`; a file naming any other type is refused, naming it. A pickle is
loaded only when the caller says it trusts the file (``trust=True``, ``--trust``), with a
warning. The bundle records the featx, scikit-learn and numpy versions it was saved with; a
different version at load time is a warning naming both.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Any

from featx.core.errors import ModelFileError, ModelFileWarning
from featx.core.files import write_atomic
from featx.core.runinfo import versions

SUFFIX = ".skops"
# Every type a featx bundle holds beyond skops' defaults: featx's own learners, and the
# scikit-learn internals of the calibrated models an ensemble averages. Found with
# skops.io.get_untrusted_types on every learner's bundle (tests/test_modelfile.py).
FEATX_TYPES = (
    # each featx type twice: where it lives now, and the name model files saved by 0.4 give
    # it (featx.learners.*, kept by featx/learners.py)
    "featx.learn.learners.KNN", "featx.learners.KNN",
    "featx.learn.learners.ProbabilityAverage", "featx.learners.ProbabilityAverage",
    "featx.learn.learners.StreamingSGD", "featx.learners.StreamingSGD",
    # rbf_svm's FunctionTransformer; classify.normalize = "power"
    "featx.learn.learners._per_feature", "featx.learners._per_feature",
    "featx.learn.learners.signed_sqrt", "featx.learners.signed_sqrt",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.model_selection._split.StratifiedKFold",
)
CHECKED_VERSIONS = ("featx", "scikit-learn", "numpy")  # a mismatch may change predictions



def save(path: str | Path, bundle: dict[str, Any]) -> Path:
    """Write ``bundle`` (with the library versions) as a skops file, atomically."""
    import skops.io as sio

    now = versions()
    bundle = {**bundle, "versions": {k: now[k] for k in CHECKED_VERSIONS}}
    return write_atomic(Path(path), sio.dumps(bundle))


def load(path: str | Path, trust: bool = False) -> Any:
    """What :func:`save` wrote. A skops file naming a type outside skops' defaults and
    :data:`FEATX_TYPES` is refused, a pickle/joblib file too, unless ``trust`` (then with a
    warning)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"no model file at {path}")
    if zipfile.is_zipfile(path):  # skops files are zip archives; a pickle never is
        bundle = _load_skops(path, trust)
    elif _zip_start(path):
        # a zip cut short (no central directory at its end): damaged, not a pickle to trust
        raise ModelFileError(f"{path}: a damaged or truncated skops file (not a complete zip "
                             "archive); save or copy it again")
    else:
        bundle = _load_pickle(path, trust)
    if isinstance(bundle, dict):
        _check_versions(path, bundle.get("versions"))
    return bundle


def _zip_start(path: Path) -> bool:
    """Whether the file starts as a zip archive does (a local file header)."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _load_skops(path: Path, trust: bool) -> Any:
    import skops.io as sio

    try:
        listed = sio.get_untrusted_types(file=path)
    except Exception as e:  # skops raises many types on a foreign or cut archive
        raise ModelFileError(f"{path}: not a readable skops file ({type(e).__name__}: {e})"
                             ) from None
    foreign = [t for t in listed if t not in FEATX_TYPES]
    if foreign and not trust:
        raise ModelFileError(
            f"{path}: refused: it holds types featx does not trust ({', '.join(foreign)}); "
            "loading them could run code. Load it only if you trust where it came from: "
            "--trust (trust=True)")
    if foreign:
        warnings.warn(f"{path}: loading types featx does not trust ({', '.join(foreign)}), "
                      "because you said you trust the file", ModelFileWarning, stacklevel=3)
    try:
        return sio.load(path, trusted=[*FEATX_TYPES, *foreign])
    except Exception as e:
        raise ModelFileError(f"{path}: not a readable skops file ({type(e).__name__}: {e})"
                             ) from None


def _load_pickle(path: Path, trust: bool) -> Any:
    if not trust:
        raise ModelFileError(
            f"{path}: refused: not a skops file, so a pickle/joblib file, which can run any "
            "code when loaded. Load it only if you trust where it came from: --trust "
            f"(trust=True); featx saves {SUFFIX} files")
    warnings.warn(f"{path}: loading a pickle/joblib file because you said you trust it; "
                  f"a pickle can run any code (featx saves {SUFFIX} files)", ModelFileWarning,
                  stacklevel=3)
    import joblib

    try:
        return joblib.load(path)
    except Exception as e:  # pickle/joblib raise many types on a foreign or cut file
        raise ModelFileError(f"{path}: not a featx model bundle ({type(e).__name__}: {e})"
                             ) from None


def _check_versions(path: Path, recorded: Any) -> None:
    if not isinstance(recorded, dict):
        warnings.warn(f"{path}: records no library versions (saved by featx before 0.2.0); "
                      "predictions may differ from when it was evaluated", ModelFileWarning,
                      stacklevel=3)
        return
    now = versions()
    for name in CHECKED_VERSIONS:
        if recorded.get(name) and recorded[name] != now[name]:
            warnings.warn(f"{path}: saved with {name} {recorded[name]}, loaded with {name} "
                          f"{now[name]}: predictions may differ", ModelFileWarning,
                          stacklevel=3)
