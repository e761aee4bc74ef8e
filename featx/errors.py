"""Every error featx raises on purpose, under one base: ``except FeatxError`` catches what
featx means to say to a user (the command line prints it as one line, with no traceback).

Each is also a ValueError or RuntimeError, as the standard library's would be, so code
written against those keeps working.
"""

from __future__ import annotations


class FeatxError(Exception):
    """Base of every error featx raises on purpose: its message says what and where."""


class ConfigError(FeatxError, ValueError):
    """A pipeline file or override that cannot be used."""


class DatasetError(FeatxError, ValueError):
    """A dataset that cannot be read: says what and where."""


class BackboneError(FeatxError, ValueError):
    """A backbone, layer, pooling or weights setting that cannot be used."""


class StoreError(FeatxError, ValueError):
    """A store that is missing, unfinished, damaged or does not match what was asked."""


class ExtractError(FeatxError, RuntimeError):
    """Extraction could not finish as asked (finished blocks are kept for a resume)."""


class ClassifierError(FeatxError, ValueError):
    """A classifier that is unknown or cannot be fitted on the data as asked."""


class FinetuneError(FeatxError, ValueError):
    """Fine-tuning settings or data that cannot be used."""


class PredictError(FeatxError, ValueError):
    """A saved model or input images that cannot be used for prediction."""


class RunsError(FeatxError, ValueError):
    """Result files that cannot be read or compared."""


class ExportError(FeatxError, ValueError):
    """An export that cannot be made as asked: says which format or file."""


class ModelFileError(FeatxError, ValueError):
    """A model file that is missing, unreadable or not trusted: says which and why."""


class TrackingError(FeatxError, ValueError):
    """MLflow asked for but not installed, or a tracking URI it cannot use."""


class ExplainError(FeatxError, ValueError):
    """Images, classes or options that `featx explain` cannot use: says which."""


class AuditError(FeatxError, ValueError):
    """A store or option that `featx audit` cannot use: says which."""


class VisualizeError(FeatxError, ValueError):
    """A layer, channel or option that featx cannot draw (featx layers --filters,
    --visualize): says which."""


class SweepError(FeatxError, ValueError):
    """Layers or settings that `featx sweep` cannot compare: says which."""


class DamagedStoreError(StoreError):
    """Features that fail their checksum or cannot be read: ``path`` names the file holding
    them (a store, or one of its segments)."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path
