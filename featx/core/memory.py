"""Keeping what grows with the number of images small: a million images' metadata.

A Python list of a million paths such as ``class-03/0412/img-0412345.jpg`` holds 81 MiB (a
str object of ~77 B and an 8 B pointer each) and its ``size:mtime`` signatures 85 MiB more:
two thirds of what an extraction of 1M images held beyond TensorFlow's own ~0.8 GB.
:class:`PackedStrings` keeps them as one UTF-8 buffer, each string followed by NUL, and the
offset of each NUL (~33 B a path), and makes a str only when one is asked for.
"""

from __future__ import annotations

import ctypes
import itertools
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

CHUNK = 65536  # strings encoded, decoded or written at a time


class Strings(Sequence):
    """A sequence of str equal to any sequence of the same strings (a list included)."""

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedStrings) and isinstance(self, PackedStrings):
            return self.buffer == other.buffer
        if isinstance(other, (list, tuple, Strings)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to a list, so unhashable like one

    def __repr__(self) -> str:
        head = ", ".join(repr(s) for s in itertools.islice(self, 3))
        return f"{type(self).__name__}([{head}{', ...' if len(self) > 3 else ''}], n={len(self)})"


class PackedStrings(Strings):
    """An immutable sequence of str (none holding NUL), stored as ``buffer``: each string's
    UTF-8 bytes followed by ``b"\\0"``, and ``ends`` (int32 (N,) while the buffer is under
    2 GiB, else int64): the offset of each NUL."""

    def __init__(self, strings: Iterable[str] = ()) -> None:
        if isinstance(strings, PackedStrings):
            self.buffer, self.ends = strings.buffer, strings.ends
            return
        buffer = bytearray()  # grown in place: no second copy of it at the end
        ends: list[np.ndarray] = []
        it = iter(strings)
        while chunk := list(itertools.islice(it, CHUNK)):
            data = ("\0".join(chunk) + "\0").encode()
            nul = np.flatnonzero(np.frombuffer(data, np.uint8) == 0)
            if len(nul) != len(chunk):
                raise ValueError("a string holds NUL: it cannot be packed")
            ends.append(nul + len(buffer))
            buffer += data
        self.buffer: bytes | bytearray = buffer
        self.ends = _offsets(np.concatenate(ends) if ends else np.zeros(0, np.int64))

    @classmethod
    def _of(cls, buffer: bytes | bytearray, ends: np.ndarray) -> PackedStrings:
        out = cls.__new__(cls)
        out.buffer, out.ends = buffer, ends
        return out

    def __len__(self) -> int:
        return len(self.ends)

    def _start(self, i: int) -> int:
        return int(self.ends[i - 1]) + 1 if i else 0

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                return self.take(np.arange(start, stop, step))
            if stop <= start:
                return PackedStrings()
            first = self._start(start)
            return self._of(self.buffer[first:int(self.ends[stop - 1]) + 1],
                            self.ends[start:stop] - first)
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.buffer[self._start(i):int(self.ends[i])].decode()

    def __iter__(self) -> Iterator[str]:
        for a in range(0, len(self), CHUNK):
            b = min(a + CHUNK, len(self))
            yield from self.buffer[self._start(a):int(self.ends[b - 1])].decode().split("\0")

    def chunks(self, size: int = CHUNK) -> Iterator[list[str]]:
        """The strings as lists of at most ``size``, in order."""
        it = iter(self)
        while chunk := list(itertools.islice(it, size)):
            yield chunk

    def take(self, indices: Sequence[int] | np.ndarray) -> PackedStrings:
        """The strings at ``indices``, in their order (int (k,))."""
        indices = np.asarray(indices, np.int64).reshape(-1)
        buffer, parts, ends, size = self.buffer, [], [], 0
        for a in range(0, len(indices), CHUNK):
            some = indices[a:a + CHUNK]
            stop = self.ends[some] + 1
            start = np.where(some > 0, self.ends[np.maximum(some - 1, 0)] + 1, 0)
            parts.append(b"".join([buffer[s:e] for s, e in zip(start.tolist(), stop.tolist())]))
            ends.append(size + np.cumsum(stop - start, dtype=np.int64) - 1)
            size += len(parts[-1])
        return self._of(b"".join(parts),
                        _offsets(np.concatenate(ends) if ends else np.zeros(0, np.int64)))


def _offsets(ends: np.ndarray) -> np.ndarray:
    """int32 offsets while the buffer is under 2 GiB (4 B a string, not 8)."""
    return ends.astype(np.int32) if len(ends) and ends[-1] < 2**31 - 1 else ends


class Taken(Sequence):
    """``get(indices[i])`` for each i, made when asked for (a list of a million absolute
    paths would hold 112 MiB for the whole extraction)."""

    def __init__(self, get: Callable[[int], Any], indices: np.ndarray) -> None:
        self.get, self.indices = get, np.asarray(indices, np.int64).reshape(-1)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Taken(self.get, self.indices[i])
        return self.get(int(self.indices[i]))


def release_freed_memory() -> None:
    """Give the pages that freed memory left in the heap back to the system (glibc's
    ``malloc_trim``; elsewhere nothing). glibc keeps freed blocks for reuse, and blocks of
    over 128 KiB stop going back once a larger one was freed: listing 1M files left 41-47
    MiB so held (stat results, names), which then stayed for the whole extraction."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # another C library (musl): nothing to give back
            pass
