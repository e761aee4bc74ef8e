"""Finished blocks of an unfinished extraction, bound to the job they were made for."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from featx.core.errors import StoreError
from featx.core.files import write_atomic
from featx.core.layout import (
    block_file,
    job_meta,
    partial_dir,
)

log = logging.getLogger(__name__)


class BlockDir:
    """Finished blocks of an unfinished extraction, one ``.npz`` file each, with the SHA-256
    of its bytes in a ``.sha256`` file beside it.

    A block is written to a temporary name and renamed, so a process killed at any moment
    leaves only whole blocks; the next run skips them. A block that cannot be read or does
    not match its checksum is discarded with a warning and extracted again. The folder is
    named by the content key and ``meta.json`` records the ``job`` (which rows of the store
    the blocks hold: an update extracts only some) and the row count: blocks of any other
    job are discarded, never resumed from.
    """

    def __init__(self, store: Path, content_key: str, rows: int, block_rows: int,
                 job: str = "all") -> None:
        self.dir = partial_dir(store, content_key)
        self.rows = rows
        self.block_rows = resume_unit(self.dir, {"key": content_key, "job": job, "rows": rows},
                                      "block_rows", max(1, block_rows))
        self._cache: tuple[int, dict[str, np.ndarray]] | None = None
        self._checked: set[int] = set()

    @property
    def n_blocks(self) -> int:
        return -(-self.rows // self.block_rows)

    def block_path(self, index: int) -> Path:
        return block_file(self.dir, index)

    def _digest_path(self, index: int) -> Path:
        return self.block_path(index).with_suffix(".sha256")

    def done(self) -> list[int]:
        """The finished blocks; damaged ones are discarded here (checked once each)."""
        out = []
        for i in range(self.n_blocks):
            if i in self._checked:
                out.append(i)
            elif self.block_path(i).exists():
                problem = self._problem(i)
                if problem:
                    warn(f"discarding resume block {self.block_path(i)} ({problem}); "
                         "its rows are extracted again")
                    self.block_path(i).unlink(missing_ok=True)
                    self._digest_path(i).unlink(missing_ok=True)
                else:
                    self._checked.add(i)
                    out.append(i)
        return out

    def _problem(self, index: int) -> str:
        """Why block ``index`` cannot be used ("" when it can)."""
        try:
            data = self.block_path(index).read_bytes()
            recorded = self._digest_path(index).read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            return f"no readable checksum: {e.strerror or e}"
        if hashlib.sha256(data).hexdigest() != recorded:
            return "does not match its checksum"
        try:
            with np.load(io.BytesIO(data)) as z:
                n = len(z["features"])
                ok = len(z["ok"])
        except Exception as e:  # any damage numpy's reader trips on
            return f"unreadable: {type(e).__name__}"
        if n != ok or n != len(self.rows_of(index)):
            return f"holds {n} rows, expected {len(self.rows_of(index))}"
        return ""

    def rows_of(self, index: int) -> range:
        return range(index * self.block_rows, min((index + 1) * self.block_rows, self.rows))

    def save(self, index: int, features: np.ndarray, ok: np.ndarray, reasons: list[str]) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, features=features, ok=ok, reasons=np.asarray(reasons, dtype=str))
        data = buffer.getvalue()
        path = self.block_path(index)
        try:
            # checksum first: a block without its checksum file is never trusted
            write_atomic(self._digest_path(index), hashlib.sha256(data).hexdigest().encode())
            write_atomic(path, data)
        except OSError as e:
            raise StoreError(f"cannot write {path}: {e.strerror or e} "
                             "(finished blocks are kept for a resume)") from None
        self._checked.add(index)

    def load(self, index: int) -> dict[str, np.ndarray]:
        if self._cache is None or self._cache[0] != index:
            with np.load(self.block_path(index)) as z:
                self._cache = (index, {k: z[k] for k in z.files})
        return self._cache[1]

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def warn(message: str) -> None:
    log.warning("%s", message)


def resume_unit(folder: Path, job: dict[str, Any], unit: str, size: int) -> int:
    """The block (or shard) size of the extraction job resumed in ``folder``: the one
    recorded in its ``meta.json`` when that records this very ``job`` (key, rows and which
    rows), else ``size``, the folder emptied first (what it holds was made for another
    job, or cannot be told apart). Records the job and its size."""
    meta_path = job_meta(folder)
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            if all(meta.get(k) == v for k, v in job.items()):
                size = int(meta[unit])  # a resumed job keeps the size it started with
            else:
                warn(f"{folder}: made for another job ({meta.get('rows')} rows to extract, "
                     f"{job['rows']} now); extracting afresh")
                shutil.rmtree(folder, ignore_errors=True)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, AttributeError):
            warn(f"{meta_path}: unreadable; what it holds is extracted again")
            shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(meta_path, json.dumps({**job, unit: size}).encode())
    return size
