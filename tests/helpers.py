"""Helpers shared by the test modules (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from PIL.Image import DecompressionBombError

if TYPE_CHECKING:  # featx is imported where used: helpers load nothing heavy
    from featx.core.config import Config
    from featx.features.extraction import ExtractResult

REPO = Path(__file__).resolve().parents[1]


def assert_close(actual, expected, rtol: float = 1e-4) -> None:
    """Features equal relative to their scale. Random-weight features are tiny (~1e-12), so
    an absolute tolerance would pass anything, zeros or rows in the wrong order included."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = float(np.abs(expected).max())
    assert scale > 0, "expected features are all zero: the comparison would prove nothing"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


@contextlib.contextmanager
def result_lines() -> Iterator[list[str]]:
    """The lines featx logs to featx.core.log.RESULTS inside the block (what the command line
    prints on stdout: classify's summary lines, sweep's table), collected in a list."""
    from featx.core.log import RESULTS

    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    RESULTS.addHandler(handler)
    try:
        yield lines
    finally:
        RESULTS.removeHandler(handler)


def one_error_line(err: str, path: str | os.PathLike | None = None) -> str:
    """The only non-blank line of ``err``: a ``featx: error:`` line (no traceback, no
    warnings before it), naming ``path`` exactly where one is given."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("featx: error:"), lines[0]
    if path is not None:
        assert str(path) in lines[0], (str(path), lines[0])
    return lines[0]


def featx_command(*args: str | os.PathLike) -> list[str]:
    """``featx ARGS`` as a fresh process running this checkout's code (run it with
    ``cwd=REPO``: ``-m`` puts the working folder first on the path)."""
    return [sys.executable, "-m", "featx.cli", *map(str, args)]


def featx_here(*args: str | os.PathLike) -> subprocess.CompletedProcess:
    """``featx ARGS`` run in this process (``featx.cli.main``) from the repository root, its
    exit status and output as ``subprocess.run`` of a fresh process gives them, without the
    ~5 CPU-seconds of a fresh interpreter importing TensorFlow. Use a fresh process only
    where that is what is tested: a kill or a crash, a signal, another user, start-up or
    import-time behaviour."""
    from featx.cli import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(REPO), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's usage errors (2), --help (0)
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
            if not isinstance(e.code, (int, type(None))):
                print(e.code, file=sys.stderr)
    return subprocess.CompletedProcess(["featx", *argv], code, out.getvalue(), err.getvalue())


def tiny_args(root: str | os.PathLike, cache: str | os.PathLike, *more: str) -> list[str]:
    """The command-line twin of conftest.tiny_config: random-weight MobileNetV2 at 32 px,
    batches of 8, no progress bar."""
    return ["--data", str(root), "--cache-dir", str(cache), "--backbone", "MobileNetV2",
            "--weights", "none", "--input-size", "32", "--batch-size", "8", "--no-progress",
            *more]


# ------------------------------------------------------------------------ images and pipelines

def random_pngs(root: Path, names: Sequence[str] | None = None, seed: int = 0, *,
                n_per_class: int = 5, classes: Sequence[str] = ("cat", "dog"),
                copies: Sequence[tuple[str, str]] = ()) -> list[str]:
    """Random-noise 44x36 PNGs written under ``root``: one per name of ``names``, or without
    names ``n_per_class`` of each class, ``<class>/<class><i>.png``. The same seed and names,
    the same pixels. ``copies``: (copy, original) pairs written as byte copies after them.
    Returns the names written (not the copies)."""
    if names is None:
        names = [f"{c}/{c}{i}.png" for c in classes for i in range(n_per_class)]
    rng = np.random.default_rng(seed)
    for name in names:
        path = Path(root) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (36, 44, 3), dtype=np.uint8)).save(path)
    for copy_name, original in copies:
        shutil.copyfile(Path(root) / original, Path(root) / copy_name)
    return list(names)


def small_config(data: Path, cache: Path, strict: bool = False) -> Config:
    """The default pipeline on ``data`` with random-weight MobileNetV2 at 32 px, batches of 4
    and 30% test."""
    from featx.core.config import Config

    c = Config()
    c.dataset.root = str(data)
    c.dataset.test = 0.3
    c.backbone.weights = "none"
    c.backbone.input_size = 32
    c.extract.batch_size = 4
    c.extract.strict = strict
    c.cache_dir = str(cache)
    return c


# A store updated in place: FIRST extracted, then ADDED (names that sort between the old ones).
FIRST = [f"{c}/{c}{i:02d}.png" for c in ("cat", "dog") for i in range(0, 20, 2)]
ADDED = ["cat/cat05.png", "dog/dog99.png", "cat/cat00b.png"]


def store_then_update(tmp_path: Path
                      ) -> tuple[Config, Path, ExtractResult, dict[str, np.ndarray], int]:
    """A store of FIRST (:func:`small_config`), then its folder with ADDED and one image
    removed: (config, data folder, first extraction, its features by path, its inode)."""
    from featx.features.extraction import extract
    from featx.store.read import FeatureStore

    data = tmp_path / "data"
    random_pngs(data, FIRST)
    config = small_config(data, tmp_path / "cache")
    first = extract(config, progress=False)
    with FeatureStore(first.path) as s:
        before = dict(zip(s.paths, s.features()))
    inode = first.path.stat().st_ino
    random_pngs(data, ADDED, seed=1)
    (data / FIRST[3]).unlink()
    return config, data, first, before, inode


def copy_of_store(store: Path, cache: Path) -> Path:
    """``store`` copied (times kept) into a new cache folder ``cache``: for a test that
    changes a store (the session's ``tiny_store`` is read-only)."""
    cache.mkdir()
    return Path(shutil.copy2(store, cache / Path(store).name))


# ------------------------------------------------------- a corpus of awkward and broken files

RED, BLUE = (255, 0, 0), (0, 0, 255)

# Each broken file of the corpus: the exception load_image raises (exactly this type: a
# TypeError from a bug in the reader must not pass) and what its recorded reason says.
BROKEN = {
    "bad/zero-byte.png": (UnidentifiedImageError, "cannot identify image file"),
    "bad/random-bytes.jpg": (UnidentifiedImageError, "cannot identify image file"),
    "bad/text-file.png": (UnidentifiedImageError, "cannot identify image file"),
    "bad/truncated.jpg": (OSError, "Truncated File Read"),
    "bad/bomb.png": (DecompressionBombError, "could be decompression bomb"),
}


def _png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb by its header)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr:ihdr + 17]))
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def _jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def make_corpus(root: Path) -> dict[str, str]:
    """Write the corpus into class folders ``good`` and ``bad``; return {relative path: 'ok'
    or 'skip'}. Good files are a red left half and a blue right half (64x48) in every way a
    camera or a program writes one: CMYK, grey, 16-bit, palette with transparency, RGBA,
    EXIF-rotated, animated GIF, WebP, BMP, odd names."""
    good, bad = root / "good", root / "bad"
    good.mkdir(parents=True)
    bad.mkdir(parents=True)
    expect = {}

    def put(rel: str, data: bytes, outcome: str) -> None:
        (root / rel).write_bytes(data)
        expect[rel] = outcome

    half = Image.new("RGB", (64, 48), RED)
    half.paste(Image.new("RGB", (32, 48), BLUE), (32, 0))
    jpeg = _jpeg_bytes(half)
    put("good/plain.jpg", jpeg, "ok")
    put("good/UPPER CASE.JPEG", jpeg, "ok")
    put("good/ünïcødé 日本.jpg", jpeg, "ok")
    put("good/cmyk.jpg", _jpeg_bytes(half.convert("CMYK")), "ok")
    put("good/gray.jpg", _jpeg_bytes(half.convert("L")), "ok")
    buf = io.BytesIO()
    Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 21).astype(np.uint16)).save(buf, "PNG")
    put("good/sixteen-bit.png", buf.getvalue(), "ok")
    buf = io.BytesIO()
    pal = half.convert("P", palette=Image.ADAPTIVE, colors=4)
    pal.info["transparency"] = 0
    pal.save(buf, "PNG", transparency=0)
    put("good/palette-alpha.png", buf.getvalue(), "ok")
    buf = io.BytesIO()
    rgba = half.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(buf, "PNG")
    put("good/rgba.png", buf.getvalue(), "ok")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    put("good/exif-rotated.jpg", _jpeg_bytes(half, exif=exif), "ok")
    buf = io.BytesIO()
    frames = [Image.new("RGB", (32, 32), RED), Image.new("RGB", (32, 32), BLUE)]
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    put("good/animated.gif", buf.getvalue(), "ok")
    buf = io.BytesIO()
    half.save(buf, "WEBP")
    put("good/photo.webp", buf.getvalue(), "ok")
    buf = io.BytesIO()
    half.save(buf, "BMP")
    put("good/photo.bmp", buf.getvalue(), "ok")

    put("bad/zero-byte.png", b"", "skip")
    put("bad/random-bytes.jpg", np.random.default_rng(0).bytes(2000), "skip")
    put("bad/text-file.png", b"this is not an image\n", "skip")
    put("bad/truncated.jpg", jpeg[: len(jpeg) // 2], "skip")
    put("bad/bomb.png", _png_with_size(30000, 30000), "skip")
    return expect


# ----------------------------------------------------------------------- features and results

def blobs(n_classes: int = 3, n: int = 60, d: int = 5, seed: int = 0, spread: float = 3.0,
          dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows of ``n_classes`` Gaussian blobs in ``d >= n_classes`` dimensions: row i is
    of class ``i % n_classes``, its mean ``spread`` along axis ``class``. Returns x (n, d) of
    ``dtype`` and y (n,) int."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    x = rng.normal(size=(n, d)) + spread * np.eye(n_classes, d)[y]
    return x.astype(dtype), y


# What classify records beside a result's metrics (featx.report.metrics.evaluate).
RESULT_FIELDS = {
    "pipeline": "tiny", "classifier": "logreg", "dataset": "animals", "store": "/x/y.h5",
    "key": "abc123", "best_params": {"clf__C": 0.1}, "cv_score": 0.625, "fit_seconds": 1.25,
    "n_train": 12, "backbone": {"backbone": "MobileNetV2", "weights": "none",
                                "layer": "(last conv)", "pooling": "avg", "input_size": 32}}


def classify_result(y: np.ndarray, scores: np.ndarray, names: list[str],
                    paths: list[str] | None = None, **fields: Any) -> dict[str, Any]:
    """A result as classify writes it: ``evaluate`` of ``scores`` (n, C), columns the classes
    0..C-1 named ``names``, with ``paths`` one per row; :data:`RESULT_FIELDS` beside it,
    ``fields`` replacing any of them. A new dict each call."""
    from featx.report.metrics import evaluate

    r = evaluate(y, scores, np.arange(len(names)), names, paths)
    r.update(copy.deepcopy(RESULT_FIELDS) | fields)
    return r


SYNTHETIC_SPLIT = {"val": 0.0, "test": 0.25, "seed": 42}


def write_synthetic_store(path: Path, features: np.ndarray, labels: np.ndarray,
                          paths: list[str], split: np.ndarray, label_names: list[str],
                          chunk_rows: int | None = None, backbone: str = "Synthetic",
                          split_attr: dict | None = None) -> Path:
    """A complete store holding ``features`` (rows in the order given), written by
    store.write_store; ``chunk_rows`` sets the HDF5 chunk size in rows."""
    from featx.store import write as store_write
    from featx.store.blocks import BlockDir
    from featx.store.write import RowSource, write_store

    n, d = features.shape
    if chunk_rows is not None:
        old = store_write.CHUNK_BYTES
        store_write.CHUNK_BYTES = chunk_rows * 4 * d
    try:
        blocks = BlockDir(path, "synthetic", rows=n, block_rows=n)
        blocks.save(0, features.astype(np.float32), np.ones(n, bool), [""] * n)
        attrs = {"key": f"key-{path.stem}", "settings_key": "s", "dataset": "synthetic",
                 "split": json.dumps(split_attr or SYNTHETIC_SPLIT), "backbone": backbone,
                 "weights": "none", "weights_id": "none", "layer": "", "pooling": "avg",
                 "input_size": 8, "preprocess": "none", "resize": "none",
                 "feature_shape": [d]}
        write_store(path, feature_shape=(d,), source=RowSource(),
                    old=None, blocks=blocks, paths=paths, signatures=[""] * n,
                    labels=labels, label_names=label_names, split=split, attrs=attrs)
        blocks.remove()
    finally:
        if chunk_rows is not None:
            store_write.CHUNK_BYTES = old
    return path


def saved_figures(monkeypatch) -> list:
    """The matplotlib figures saved from now on (``Figure.savefig`` spied on), as a list
    filled as each is saved: what a chart drew, read from the figure itself."""
    from matplotlib.figure import Figure

    figures = []
    save = Figure.savefig

    def keep(self, *args, **kwargs):
        figures.append(self)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


class Killed(Exception):
    """Stands for the process being killed."""


def extract_killed_after_first_block(config, monkeypatch) -> list[int]:
    """Run ``featx.features.extraction.extract(config)`` as a process killed right after its
    first resume block is saved (the block kept, nothing after it); returns the indices of
    the blocks saved (``[0]``)."""
    import pytest

    from featx.features.extraction import extract
    from featx.store import blocks as store_blocks

    saved: list[int] = []
    original = store_blocks.BlockDir.save

    def save_then_die(self, index, *args, **kwargs):
        original(self, index, *args, **kwargs)
        saved.append(index)
        raise Killed

    monkeypatch.setattr(store_blocks.BlockDir, "save", save_then_die)
    with pytest.raises(Killed):
        extract(config, progress=False)
    monkeypatch.undo()
    return saved
