"""featx: transfer learning by feature extraction.

images -> :mod:`featx.dataset` -> :mod:`featx.images` -> :mod:`featx.backbones`
-> :mod:`featx.store` (HDF5) -> :mod:`featx.classify` -> :mod:`featx.report`,
run by :mod:`featx.extract` and :mod:`featx.pipeline`, configured by :class:`featx.config.Config`.
"""

__version__ = "0.1.0"
