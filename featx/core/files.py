"""What every stage needs to write and name things: files written atomically, short hashes
that name settings, and the installed libraries' versions (from package metadata: importing
TensorFlow to ask would cost seconds)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path`` to write; renamed to ``path`` when the block ends
    without an error, removed otherwise: readers see the old file or the whole new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only there if the write or the rename failed


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_file`, synced to disk first."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def short_hash(data: str | bytes, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``data`` (text as UTF-8)."""
    raw = data.encode() if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()[:length]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_checksums(folder: Path, listing: Path) -> None:
    """Record the SHA-256 of every file in ``folder`` in ``listing`` (JSON: name -> digest)."""
    sums = {f.name: file_sha256(f) for f in sorted(Path(folder).iterdir())
            if f.is_file() and f != Path(listing)}
    write_atomic(listing, json.dumps(sums, indent=1))


def checksum_problems(folder: Path, listing: Path, required: str) -> list[str]:
    """Why the files of ``folder`` are not as :func:`write_checksums` recorded them in
    ``listing`` (empty: they are; ``required``: a file the listing must name)."""
    try:
        sums = json.loads(Path(listing).read_text())
        if not isinstance(sums, dict) or required not in sums:
            raise ValueError(f"{required} not listed")
    except (OSError, ValueError) as e:
        return [f"{listing}: no readable checksums ({e})"]
    problems = []
    for name, want in sums.items():
        path = Path(folder) / Path(name).name
        try:
            if file_sha256(path) != want:
                problems.append(f"{path} does not match the checksum recorded when written")
        except OSError as e:
            problems.append(f"{path}: unreadable ({e.strerror or e})")
    return problems


def installed_version(*distributions: str) -> str | None:
    """The version of the first of ``distributions`` that is installed (None: none is)."""
    for name in distributions:
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(name)
    return None
