"""Every error featx raises on purpose, under one base: ``except FeatxError`` catches what
featx means to say to a user (the command line prints it as one line, with no traceback).

Each is also a ValueError or RuntimeError, as the standard library's would be, so code
written against those keeps working.
"""

from __future__ import annotations


class FeatxError(Exception):
    """Base of every error featx raises on purpose: its message says what and where."""


class ConfigError(FeatxError, ValueError):
    """Settings that cannot be used: a pipeline file, an override or a parameter."""


class UsageError(FeatxError, ValueError):
    """A command's option or argument that cannot be used as given (``--top 0``, an unknown
    format, a folder that is not there), whichever command it was given to."""


class DatasetError(FeatxError, ValueError):
    """Images or a dataset that cannot be read or used: says what and where."""


class BackboneError(FeatxError, ValueError):
    """A backbone, layer, pooling or weights setting that cannot be used."""


class StoreError(FeatxError, ValueError):
    """A store that is missing, unfinished, damaged or does not match what was asked."""


class DamagedStoreError(StoreError):
    """Features that fail their checksum or cannot be read: ``path`` names the file holding
    them (a store, or one of its segments)."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class ExtractError(FeatxError, RuntimeError):
    """Extraction could not finish as asked (finished blocks are kept for a resume)."""


class ClassifierError(FeatxError, ValueError):
    """A classifier that is unknown or cannot be fitted on the data as asked."""


class ModelFileError(FeatxError, ValueError):
    """A saved model that is missing, unreadable, not trusted, or does not fit the backbone
    or features it is used with: says which and why."""


class ResultsError(FeatxError, ValueError):
    """Result files or run folders that cannot be read or compared."""


class DependencyError(FeatxError, RuntimeError):
    """An optional dependency (MLflow, pyarrow, Ray...) missing or not working: says which
    extra to install."""


class ModelFileWarning(UserWarning):
    """Loading a model goes ahead, but the user should know (a trusted pickle, other
    versions)."""


# The names of featx 0.4, one a command: code that catches them keeps working.
FinetuneError = ConfigError
PredictError = ModelFileError
RunsError = ResultsError
ExportError = UsageError
TrackingError = DependencyError
ExplainError = AuditError = VisualizeError = SweepError = UsageError
