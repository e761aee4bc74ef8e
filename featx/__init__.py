"""featx: transfer learning by feature extraction.

The tree reads as the data flow, each stage a subpackage importing only those below it:
:mod:`featx.core` (errors, config, cache names, files) -> :mod:`featx.data` (datasets,
the image reader) -> :mod:`featx.store` (the HDF5 feature store) -> :mod:`featx.features`
(backbones, extraction) -> :mod:`featx.report` (metrics, charts, pages) ->
:mod:`featx.learn` (classifiers, fine-tuning, prediction) -> :mod:`featx.inspect` (audit,
explain, visualize, sweep). Two faces over the same functions: the Python API
(:mod:`featx.api`, re-exported here) and the command line (:mod:`featx.cli`).
"""

import os

from featx.core import log as _log  # noqa: F401  (featx's messages: warnings to stderr)

# TF 2.21 leaves oneDNN off on CPUs without AVX512-VNNI/AMX; on this AVX2 machine turning it
# on took MobileNetV2 from 39 to 64-74 img/s (features agree to 2e-6 relative). Only takes
# effect if featx is imported before TensorFlow; a user's own setting wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.7.0"  # also the first heading of CHANGELOG.md

# The public API (docs: how-to/python.md). Loaded on first use, so that `import featx` (and the
# command line) imports neither scikit-learn nor TensorFlow.
_PUBLIC = {
    "extract": "featx.api", "classify": "featx.api", "load_model": "featx.api",
    "make_config": "featx.api", "Store": "featx.api", "ClassifyResult": "featx.api",
    "Model": "featx.api", "sweep": "featx.api", "export_model": "featx.api", "runs": "featx.api",
    "FeatureExtractor": "featx.features.transformer", "Config": "featx.core.config",
    "FeatxError": "featx.core.errors",
}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'featx' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API too (loaded on first use): tab completion in a notebook finds it."""
    return sorted({*globals(), *__all__})
