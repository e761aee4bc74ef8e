"""``featx cache export``: a store's features and metadata in the files other tools read.

The layout of clip-retrieval's embeddings, which pandas, Spark, faiss and vector databases
take: features (float32, the store's row order) in ``.npy`` beside the metadata in Parquet
(path, label, label_name, split, ok; one row per feature row). Or one ``.npz`` holding
both, or one Parquet file with the features as a fixed-size list column.

Everything is streamed: the features are read and written ``buffer_bytes`` at a time (whole
store chunks), so memory stays flat for a store larger than RAM. A store made on Ray (a
virtual dataset over its shard files) is read through its shards; the export is plain
files that need no shard folder.
"""

from __future__ import annotations

import contextlib
import itertools
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from featx.core.errors import UsageError
from featx.core.files import atomic_file
from featx.data.dataset import TEST, TRAIN, VAL
from featx.store.read import FeatureStore

FORMATS = {"npy": ("features.npy", "metadata.parquet"), "npz": ("features.npz",),
           "parquet": ("features.parquet",)}
BUFFER_BYTES = 64 << 20  # features read and written at a time
SPLIT_NAMES = {TRAIN: "train", VAL: "val", TEST: "test"}
FLOAT32 = np.dtype("<f4")



def export(store_path: str | Path, fmt: str, out_dir: str | Path,
           buffer_bytes: int = BUFFER_BYTES) -> list[Path]:
    """Write the store's features and metadata into ``out_dir`` as ``fmt`` (npy: features.npy
    + metadata.parquet; npz: features.npz; parquet: features.parquet). Refuses to replace
    existing files; each file appears whole (temporary name, then rename). Returns the
    files written."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; formats: {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    targets = [out_dir / name for name in FORMATS[fmt]]
    there = [str(t) for t in targets if t.exists()]
    if there:
        raise UsageError(f"{', '.join(there)} already there: remove it or give another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    with FeatureStore(store_path) as store, contextlib.ExitStack() as files:
        tmps = [files.enter_context(atomic_file(t)) for t in targets]
        reader = _Reader(store, buffer_bytes)
        if fmt == "npy":
            _write_npy(reader, *tmps)
        elif fmt == "npz":
            _write_npz(reader, tmps[0])
        else:
            _write_parquet(reader, tmps[0])
    return targets


class _Reader:
    """A store's rows, ``buffer_bytes`` of features at a time, with their metadata."""

    def __init__(self, store: FeatureStore, buffer_bytes: int) -> None:
        self.store = store
        self.rows, self.shape = len(store), store.feature_shape
        self.width = int(np.prod(self.shape))
        step = max(1, buffer_bytes // (4 * max(self.width, 1)))
        chunk = store.rows_per_read  # one checksum block: whole chunks, each read once
        self.step = max(chunk, step // chunk * chunk)
        self.label_names = np.asarray(store.label_names, dtype=object)

    def spans(self) -> Iterator[slice]:
        for start in range(0, self.rows, self.step):
            yield slice(start, min(start + self.step, self.rows))

    def feature_blocks(self) -> Iterator[np.ndarray]:
        """The features of each span, read into one buffer reused for every span: a view,
        valid until the next one is asked for."""
        buffer = np.empty((min(self.step, self.rows), *self.shape), FLOAT32)
        for span in self.spans():
            n = span.stop - span.start
            # checked as read, as every command reads features: an export is no way round
            self.store.read_rows(np.arange(span.start, span.stop), out=buffer[:n])
            yield buffer[:n]

    def column(self, name: str, span: slice) -> np.ndarray:
        """One metadata column of the rows in ``span``: path, label, label_name, split, ok."""
        try:
            return self._column(name, span)
        except OSError as e:  # name the store, never h5py's bare message
            raise UsageError(f"{self.store.path}: {name} column unreadable "
                              f"({str(e).split(':')[0]}); the file is damaged: run `featx "
                              "extract` to rebuild the store") from None

    def _column(self, name: str, span: slice) -> np.ndarray:
        f = self.store.file
        if name == "path":
            return f["paths"].asstr()[span].astype(object)
        if name == "label":
            return f["labels"][span].astype(np.int32)
        if name == "label_name":
            return self.label_names[f["labels"][span]]
        if name == "split":
            return np.array([SPLIT_NAMES.get(int(s), str(s)) for s in f["split"][span]],
                            dtype=object)
        return f["ok"][span].astype(bool)

    def metadata_blocks(self) -> Iterator[dict[str, np.ndarray]]:
        for span in self.spans():
            yield {name: self.column(name, span) for name in METADATA}

    @property
    def attrs(self) -> dict[str, str]:
        """What the exported files record about their source."""
        a = self.store.attrs
        return {"featx_store": self.store.path.name, "key": str(a.get("key", "")),
                "feature_shape": ",".join(map(str, self.shape)),
                "label_names": ",".join(self.label_names)}


METADATA = ("path", "label", "label_name", "split", "ok")


def _npy_header(f: BinaryIO, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    np.lib.format.write_array_header_2_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                             "fortran_order": False, "shape": shape})


def _stream_npy(f: BinaryIO, dtype: np.dtype, shape: tuple[int, ...],
                blocks: Iterator[np.ndarray]) -> None:
    """An ``.npy`` written block by block: the header (shape known), then the rows."""
    _npy_header(f, dtype, shape)
    for block in blocks:
        f.write(np.ascontiguousarray(block, dtype=dtype).data)


def _write_npy(reader: _Reader, features: Path, metadata: Path) -> None:
    with open(features, "wb") as f:
        _stream_npy(f, FLOAT32, (reader.rows, *reader.shape), reader.feature_blocks())
    _parquet(reader, metadata, with_features=False)


def _write_npz(reader: _Reader, path: Path) -> None:
    # np.load reads an .npz as a zip of .npy members: written one member at a time, each
    # streamed (numbers stored, not compressed, as np.savez does)
    def column(name: str, dtype: np.dtype) -> Iterator[np.ndarray]:
        return (reader.column(name, span).astype(dtype) for span in reader.spans())

    widest = max((len(p) for span in reader.spans() for p in reader.column("path", span)),
                 default=1)
    members: list[tuple[str, np.dtype, tuple[int, ...], Callable[[], Iterator[np.ndarray]]]]
    members = [
        ("features", FLOAT32, (reader.rows, *reader.shape), reader.feature_blocks),
        ("path", np.dtype(f"<U{widest}"), (reader.rows,),
         lambda: column("path", np.dtype(f"<U{widest}"))),
        ("label", np.dtype("<i4"), (reader.rows,), lambda: column("label", np.dtype("<i4"))),
        ("split", np.dtype("<U5"), (reader.rows,), lambda: column("split", np.dtype("<U5"))),
        ("ok", np.dtype(bool), (reader.rows,), lambda: column("ok", np.dtype(bool))),
    ]
    names = reader.label_names.astype(str)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for name, dtype, shape, blocks in members:
            with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                _stream_npy(f, dtype, shape, blocks())
        with z.open("label_names.npy", "w") as f:
            np.lib.format.write_array(f, names, allow_pickle=False)


def _write_parquet(reader: _Reader, path: Path) -> None:
    _parquet(reader, path, with_features=True)


def _parquet(reader: _Reader, path: Path, with_features: bool) -> None:
    """Parquet, one row group per buffer: the metadata columns, and with ``with_features``
    the features as a fixed-size list of float32 per row."""
    pa, pq = _pyarrow()
    fields = [pa.field("path", pa.string()), pa.field("label", pa.int32()),
              pa.field("label_name", pa.string()), pa.field("split", pa.string()),
              pa.field("ok", pa.bool_())]
    if with_features:
        fields.append(pa.field("features", pa.list_(pa.float32(), reader.width)))
    schema = pa.schema(fields, metadata=reader.attrs)
    blocks = zip(reader.metadata_blocks(), reader.feature_blocks() if with_features
                 else itertools.repeat(None))
    with pq.ParquetWriter(path, schema, use_dictionary=["label_name", "split"]) as writer:
        for meta, block in blocks:
            columns: dict[str, Any] = dict(meta)
            if with_features:  # zero-copy view of the buffer as Arrow
                flat = pa.array(block.reshape(-1), type=pa.float32())
                columns["features"] = pa.FixedSizeListArray.from_arrays(flat, reader.width)
            writer.write_table(pa.table(columns, schema=schema))


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError("Parquet export needs pyarrow: pip install 'featx[export]'") from None
    return pa, pq
