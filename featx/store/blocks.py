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
from featx.core.log import plural

log = logging.getLogger(__name__)


class BlockDir:
    """Finished blocks of an unfinished extraction, one ``.npz`` file each, with the SHA-256
    of its bytes in a ``.sha256`` file beside it.

    A block is written to a temporary name and renamed, so a process killed at any moment
    leaves only whole blocks; the next run skips them. A block that cannot be read or does
    not match its checksum is discarded with a warning and extracted again. The folder is
    named by the content key and ``meta.json`` records the ``job`` (which rows of the store
    the blocks hold: an update extracts only some) and the row count: blocks of any other
    job are discarded, never resumed from. It also records ``about`` (the dataset and
    settings the job extracts, as the store's attributes will: what ``featx cache ls`` and
    the commands that find no store say of it) and, when the job stopped on an error that a
    resume would meet again, ``stopped`` (:meth:`stop`); a folder of featx 0.4 has neither.
    """

    def __init__(self, store: Path, content_key: str, rows: int, block_rows: int,
                 job: str = "all", about: dict[str, Any] | None = None) -> None:
        self.dir = partial_dir(store, content_key)
        self.rows = rows
        self.block_rows = resume_unit(self.dir, {"key": content_key, "job": job, "rows": rows},
                                      "block_rows", max(1, block_rows), about)
        self._cache: tuple[int, dict[str, np.ndarray]] | None = None
        self._checked: set[int] = set()

    def stop(self, reason: str) -> None:
        """Record why the job stopped (one line: the error a resume would meet again, such
        as weights that cannot be downloaded offline); the next start clears it."""
        meta = job_record(self.dir)
        meta["stopped"] = reason.strip().splitlines()[0] if reason.strip() else "an error"
        try:
            write_atomic(job_meta(self.dir), json.dumps(meta).encode())
        except OSError as e:  # the error being reported matters more than its record
            warn(f"cannot record why {self.dir} stopped: {e.strerror or e}")

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
            return f"holds {plural(n, 'row')}, expected {len(self.rows_of(index))}"
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


def job_record(folder: Path) -> dict[str, Any]:
    """What an unfinished extraction's ``meta.json`` records (empty where it is missing or
    unreadable): ``key``, ``job``, ``rows``, the block or shard size, and where recorded
    ``about`` and ``stopped`` (:class:`BlockDir`)."""
    try:
        meta = json.loads(job_meta(folder).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def resume_unit(folder: Path, job: dict[str, Any], unit: str, size: int,
                about: dict[str, Any] | None = None) -> int:
    """The block (or shard) size of the extraction job resumed in ``folder``: the one
    recorded in its ``meta.json`` when that records this very ``job`` (key, rows and which
    rows), else ``size``, the folder emptied first (what it holds was made for another
    job, or cannot be told apart). Records the job and its size, and ``about`` (not part
    of the job: a folder recording none resumes as well); a new start clears ``stopped``."""
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
    record = {**job, unit: size, **({"about": about} if about else {})}
    write_atomic(meta_path, json.dumps(record).encode())
    return size
