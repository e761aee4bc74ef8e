"""``featx cache export``: a store's features and metadata as .npy + Parquet, .npz or Parquet,
streamed; read back with numpy / pyarrow equal to the store (issue 12)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from realdata import needs_shared, store_of

from featx.cli import main
from featx.core.errors import UsageError
from featx.data.dataset import TEST, TRAIN, VAL
from featx.store.export import FORMATS, export
from featx.store.keys import FeatureDigest, read_rows_for
from featx.store.read import FeatureStore
from featx.store.write import CHUNK_BYTES, write_columns

SPLITS = {TRAIN: "train", VAL: "val", TEST: "test"}


def read_back(out: Path, fmt: str) -> tuple[np.ndarray, dict[str, list]]:
    """Features and metadata columns of an export, read with numpy / pyarrow only."""
    if fmt == "npy":
        features = np.load(out / "features.npy")
        meta = pq.read_table(out / "metadata.parquet").to_pydict()
    elif fmt == "npz":
        with np.load(out / "features.npz") as z:
            features = z["features"]
            names = list(z["label_names"])
            meta = {"path": list(z["path"]), "label": z["label"].tolist(),
                    "label_name": [names[i] for i in z["label"]], "split": list(z["split"]),
                    "ok": z["ok"].tolist()}
    else:
        table = pq.read_table(out / "features.parquet")
        width = table.schema.field("features").type.list_size
        flat = table.column("features").combine_chunks().flatten().to_numpy()
        shape = [int(s) for s in table.schema.metadata[b"feature_shape"].decode().split(",")]
        features = flat.reshape(len(table), width).reshape(len(table), *shape)
        meta = table.drop_columns(["features"]).to_pydict()
    return features, meta


def assert_equal_to_store(out: Path, fmt: str, store_path: Path) -> None:
    features, meta = read_back(out, fmt)
    with FeatureStore(store_path) as store:
        expected = store.file["features"][:]
        names = store.label_names
        assert features.dtype == np.float32 and features.shape == expected.shape
        np.testing.assert_array_equal(features, expected)
        assert meta["path"] == store.paths
        assert meta["label"] == store.labels.tolist()
        assert meta["label_name"] == [names[i] for i in store.labels]
        assert meta["split"] == [SPLITS[s] for s in store.split]
        assert meta["ok"] == store.ok.tolist()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_export_reads_back_equal_to_the_store(tiny_store, tmp_path, fmt):
    # 5 rows a buffer: the 18 rows cross buffer boundaries (the last one short)
    written = export(tiny_store.path, fmt, tmp_path / fmt, buffer_bytes=5 * 1280 * 4)
    assert [p.name for p in written] == list(FORMATS[fmt])
    assert sorted(p.name for p in (tmp_path / fmt).iterdir()) == sorted(FORMATS[fmt])
    assert_equal_to_store(tmp_path / fmt, fmt, tiny_store.path)


def test_cli_export_by_key_and_refusals(tiny_store, tmp_path, capsys):
    cache = tiny_store.config.cache_dir
    out = tmp_path / "emb"
    assert main(["cache", "export", tiny_store.key[:8], "--cache-dir", cache,
                 "--format", "npy", "--out", str(out)]) == 0
    assert capsys.readouterr().out.split() == ["wrote", str(out / "features.npy"),
                                               "wrote", str(out / "metadata.parquet")]
    assert_equal_to_store(out, "npy", tiny_store.path)
    before = (out / "features.npy").read_bytes()
    # nothing is replaced; bad input is one line naming what and where
    for args, named in [
        ([tiny_store.key[:8], "--format", "npy", "--out", str(out)], "features.npy"),
        ([str(tmp_path / "absent.h5"), "--format", "npz", "--out", str(out)], "absent.h5"),
        (["nosuchkey", "--format", "npz", "--out", str(out)], "nosuchkey"),
    ]:
        assert main(["cache", "export", *args, "--cache-dir", cache]) == 2
        err = capsys.readouterr().err
        assert err.startswith("featx: error:") and err.count("\n") == 1 and named in err
    assert (out / "features.npy").read_bytes() == before
    with pytest.raises(SystemExit):  # argparse: the formats are a choice
        main(["cache", "export", tiny_store.key[:8], "--format", "csv", "--out", str(out)])
    with pytest.raises(UsageError, match="unknown export format 'csv'"):
        export(tiny_store.path, "csv", out)


def virtual_copy(store_path: Path, folder: Path, shard_rows: int = 7) -> Path:
    """The store rebuilt as the Ray engine publishes one: a virtual dataset over shard files
    (featx.features.distributed's own writer and joiner)."""
    from featx.features.distributed import ShardDir, _ShardWriter, _write_virtual

    folder.mkdir()
    target = folder / store_path.name
    with FeatureStore(store_path) as store:
        features, ok = store.file["features"][:], store.ok
        attrs = store.attrs
        shards = ShardDir(target, attrs["key"], len(store), shard_rows)
        for index in range(shards.n_shards):
            start, stop = shards.bounds(index)
            writer = _ShardWriter(shards, index, features.shape[1:], "lzf")
            writer.write(np.arange(start, stop), features[start:stop], ok[start:stop],
                         np.array([""] * (stop - start)))
            writer.finish()
        _write_virtual(target, shards, feature_shape=features.shape[1:], paths=store.paths,
                       signatures=store.signatures, labels=store.labels,
                       label_names=store.label_names, split=store.split,
                       attrs={k: v for k, v in attrs.items()
                              if k not in ("features_sha256", "rows", "complete")})
    return target


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
def test_export_of_a_ray_virtual_store(tiny_store, tmp_path, fmt):
    store = virtual_copy(tiny_store.path, tmp_path / "ray-cache")
    with h5py.File(store) as f:
        assert f["features"].is_virtual  # the control: a store only its shards make whole
    export(store, fmt, tmp_path / "out", buffer_bytes=4 * 1280 * 4)
    shutil.rmtree(next((tmp_path / "ray-cache").glob("*.shards")))  # the export stands alone
    assert_equal_to_store(tmp_path / "out", fmt, tiny_store.path)


def synthetic_store(path: Path, rows: int, width: int) -> Path:
    """A store of random features laid out as featx writes them (2 MB chunks)."""
    rng = np.random.default_rng(rows)
    chunk = max(1, min(rows, CHUNK_BYTES // (4 * width)))
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("features", (rows, width), np.float32, chunks=(chunk, width))
        digest = FeatureDigest(read_rows_for(chunk))  # checksums as featx writes them
        for start in range(0, rows, chunk):
            stop = min(start + chunk, rows)
            ds[start:stop] = block = rng.random((stop - start, width), np.float32)
            digest.update(block)
        write_columns(f, labels=np.arange(rows) % 3, paths=[f"c/{i:07d}.jpg" for i in
                                                           range(rows)],
                      signatures=[""] * rows, label_names=["a", "b", "c"],
                      split=np.arange(rows) % 3, ok=np.ones(rows, bool), skipped=[],
                      attrs={"key": f"synthetic{rows}"}, digest=digest)
    return path


MEASURE = """
import json, sys
from pathlib import Path
from featx.store.export import export
store, small, fmt, out, buffer = sys.argv[1:]
export(small, fmt, Path(out) / "warm-up", int(buffer))  # imports and pools, not measured
def status(field):
    line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
    return int(line.split()[1]) * 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak resident size (VmHWM) to the current one
base = status("VmRSS")
export(store, fmt, Path(out) / "measured", int(buffer))
print(json.dumps(status("VmHWM") - base))
"""


@pytest.mark.slow
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_memory_stays_flat_for_a_store_four_times_the_buffer(tmp_path, fmt):
    """Peak memory exporting a store 4x the buffer exceeds that of exporting one 1x by less
    than a quarter of the 3 buffers of features more: the export never holds the whole store
    (read whole, the 4x store would take 48 MiB more). Not a ratio: pyarrow's and HDF5's own
    buffers grow a little with the rows (3.8 MiB of 17 here, some runs over 1.2x)."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak memory")
    width, buffer = 1024, 16 << 20  # 4096 rows a buffer
    rows = buffer // (4 * width)
    small = synthetic_store(tmp_path / "warm.h5", 64, width)
    peaks = {}
    for times in (1, 4):
        store = synthetic_store(tmp_path / f"x{times}.h5", rows * times, width)
        out = tmp_path / f"out{times}"
        done = subprocess.run([sys.executable, "-c", MEASURE, str(store), str(small), fmt,
                               str(out), str(buffer)], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1], timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        peaks[times] = json.loads(done.stdout)
        assert_equal_to_store(out / "measured", fmt, store)
    print(f"{fmt}: peak above baseline {peaks[1] / 2**20:.1f} MiB (store 1x the buffer), "
          f"{peaks[4] / 2**20:.1f} MiB (4x)")
    assert peaks[4] - peaks[1] <= 3 * buffer / 4, peaks


@pytest.mark.slow
@pytest.mark.shared
@needs_shared
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_flowers17_store_exports_equal(flowers17, tmp_path, fmt):  # noqa: F811
    """The real Flowers-17 store (MobileNetV2 features of 1,360 photographs)."""
    store = store_of(flowers17)
    export(store, fmt, tmp_path / fmt)
    assert_equal_to_store(tmp_path / fmt, fmt, store)
    features, meta = read_back(tmp_path / fmt, fmt)
    assert features.shape == (1360, 1280) and len(set(meta["label_name"])) == 17
