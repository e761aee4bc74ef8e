"""Connecting to Ray, for the two things featx runs on a cluster: extraction
(featx.features.distributed) and the grid search's jobs (featx.learn.learners.search_backend). Ray
is an
optional extra (pip install 'featx[ray]'), imported only here and only when asked for."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from featx.core.errors import ExtractError


def _ray(error: type[Exception] = ExtractError):
    try:
        import ray
    except ImportError:
        raise error("the ray engine needs Ray: pip install 'featx[ray]' "
                    "(on every machine of the cluster)") from None
    return ray


@contextlib.contextmanager
def connected(address: str, error: type[Exception] = ExtractError) -> Iterator[Any]:
    """Ray connected to ``address`` ("" : $RAY_ADDRESS, else a new one-machine instance);
    disconnects afterwards only if it connected here."""
    ray = _ray(error)
    mine = not ray.is_initialized()
    if mine:
        try:
            ray.init(address=address or None, logging_level=logging.WARNING,
                     log_to_driver=False, configure_logging=False)
        except ConnectionError as e:
            raise error(f"cannot reach the Ray cluster at {address!r}: {e}") from None
    try:
        yield ray
    finally:
        if mine:
            ray.shutdown()
