"""What names and checks a store's contents: the content key, the column, block and
segment checksums, the format's constants and the libraries a store records."""

from __future__ import annotations

import hashlib
import itertools
import json
import platform
from typing import Any

import h5py
import numpy as np

from featx.core.files import installed_version, short_hash
from featx.core.memory import CHUNK, PackedStrings

FORMAT_VERSION = 2  # 2: content-keyed file names, column and block checksums


MIN_READ_ROWS = 64  # iter_chunks reads at least this many rows at a time


VIRTUAL_READ_ROWS = 4096  # rows a read of a virtual store (no chunks of its own)


STRING = h5py.string_dtype("utf-8")


def store_key(settings: dict[str, Any]) -> str:
    """A short hash of everything that changes the numbers (never of locations or speeds)."""
    return short_hash(json.dumps({**settings, "format_version": FORMAT_VERSION}, sort_keys=True))


def columns_digest(*, labels, paths, split, ok, label_names, feature_row=None,
                   segments: str | None = None) -> str:
    """One SHA-256 of every per-row column a result depends on, besides the features
    (a segmented store's ``feature_row`` and ``segments`` list included; a plain store's
    digest is unchanged)."""
    h = hashlib.sha256()
    # hashlib reads the arrays' own buffers: no copy of their bytes beside them
    if feature_row is not None:
        h.update(b"\x1f")
        h.update(np.ascontiguousarray(feature_row, "<i8"))
    if segments is not None:  # which segment file holds which rows, and their checksums
        h.update(b"\x1d" + segments.encode())
    h.update(np.ascontiguousarray(labels, "<i4"))
    h.update(np.ascontiguousarray(split, "i1"))
    h.update(np.ascontiguousarray(ok, bool))
    for texts in (paths, label_names):
        h.update(b"\x1e")
        if isinstance(texts, PackedStrings):  # its buffer is each text followed by NUL
            h.update(texts.buffer)
            continue
        it = iter(texts)
        while piece := list(itertools.islice(it, CHUNK)):
            # each text followed by NUL, as one update a slice (1M paths: 0.1 s, not 0.6);
            # UTF-8 bytes as a store holds them are hashed as they are (no str made)
            piece = [t if isinstance(t, bytes) else str(t).encode() for t in piece]
            h.update(b"\0".join(piece) + b"\0")
    return h.hexdigest()


class FeatureDigest:
    """SHA-256 of every ``rows`` rows of features (``block_sha256``) and of all of them,
    fed rows in order, in pieces of any size."""

    def __init__(self, rows: int) -> None:
        self.rows = max(1, int(rows))
        self.whole = hashlib.sha256()
        self.blocks: list[str] = []
        self._block = hashlib.sha256()
        self._filled = 0

    def update(self, features: np.ndarray) -> None:
        features = np.ascontiguousarray(features, np.float32)
        self.whole.update(features.tobytes())
        at = 0
        while at < len(features):
            take = min(self.rows - self._filled, len(features) - at)
            self._block.update(features[at:at + take].tobytes())
            self._filled += take
            at += take
            if self._filled == self.rows:
                self.blocks.append(self._block.hexdigest())
                self._block, self._filled = hashlib.sha256(), 0

    def finish(self) -> tuple[str, list[str]]:
        if self._filled:
            self.blocks.append(self._block.hexdigest())
            self._block, self._filled = hashlib.sha256(), 0
        return self.whole.hexdigest(), self.blocks


def read_rows_for(chunk_rows: int | None) -> int:
    """How many rows one read (and one checksum block) covers: whole chunks, at least
    MIN_READ_ROWS rows; a virtual dataset over Ray shards has no chunks of its own."""
    if not chunk_rows:
        return VIRTUAL_READ_ROWS
    return chunk_rows * max(1, MIN_READ_ROWS // chunk_rows)


def library_versions() -> dict[str, str]:
    """Installed versions, from package metadata: importing TensorFlow to ask would cost
    seconds, and a cache hit imports none."""
    import featx

    def installed(*names: str) -> str:
        return installed_version(*names) or "?"

    return {"featx": featx.__version__,
            "tensorflow": installed("tensorflow", "tensorflow-cpu", "tf-nightly"),
            "keras": installed("keras"), "h5py": h5py.__version__, "numpy": np.__version__,
            "scikit-learn": installed("scikit-learn"), "python": platform.python_version()}


def segment_digest(rows: int, check_rows: int, block_sha256: list[str]) -> str:
    """What binds a segment file to its place in a store: a SHA-256 of its row count, block
    size and block checksums (swapping two segment files of one length changes it)."""
    text = json.dumps([int(rows), int(check_rows), list(block_sha256)])
    return hashlib.sha256(text.encode()).hexdigest()


def as_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
