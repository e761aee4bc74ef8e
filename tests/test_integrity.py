"""Nothing stale, nothing silent: every result comes from the data it names, or featx says why.

One test (or a few) per line of the issue that asked for it; each failed on the code before.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import (
    copy_of_store,
    extract_killed_after_first_block,
    featx_here,
    one_error_line,
    tiny_args,
)

from featx.cli import main
from featx.core.errors import StoreError
from featx.features.extraction import extract
from featx.store.read import FeatureStore

REPO = Path(__file__).resolve().parents[1]


def copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)  # copy2: the same sizes and mtimes
    return dst


# ------------------------------------------------------ 1. a store is found by what it holds

def test_two_datasets_with_one_folder_name_keep_their_own_stores(tmp_path, image_folder,
                                                                   make_config, capsys):
    x, y = tmp_path / "x" / "flowers", tmp_path / "y" / "flowers"
    image_folder(x, {"rose": (200, 30, 30), "iris": (30, 30, 200)}, per_class=6, junk=False)
    image_folder(y, {"tulip": (200, 200, 30), "daisy": (240, 240, 240), "fern": (30, 200, 30)},
                 per_class=6, junk=False)
    cache = tmp_path / "cache"
    first = extract(make_config(x, cache), progress=False)
    with FeatureStore(first.path) as store:
        x_features = store.features()
    second = extract(make_config(y, cache), progress=False)
    assert second.path != first.path and not second.cache_hit
    with FeatureStore(first.path) as store:  # y's extraction never touched x's store
        assert store.attrs["key"] == first.key and store.label_names == ["iris", "rose"]
        np.testing.assert_array_equal(store.features(), x_features)
    assert extract(make_config(x, cache), progress=False).cache_hit
    capsys.readouterr()
    out = tmp_path / "results"
    assert main(["classify", *tiny_args(x, cache, "--classifiers", "logreg", "--out",
                                        str(out))]) == 0
    report = next(out.rglob("*logreg.md")).read_text()
    assert "rose" in report and "tulip" not in report


def test_the_same_files_under_another_folder_name_are_a_cache_hit(tiny_store, tmp_path,
                                                                  make_config, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy2(tiny_store.path, cache / tiny_store.path.name)
    renamed = copy_dataset(tiny_store.root, tmp_path / "elsewhere" / "renamed-shapes")
    config = make_config(renamed, cache)
    from featx.features.backbones import Backbone

    monkeypatch.setattr(Backbone, "model", property(lambda self: pytest.fail("model built")))
    result = extract(config, progress=False)
    assert result.cache_hit and result.path == cache / tiny_store.path.name
    assert result.key == tiny_store.key


# --------------------------------------------------- 2. commands check the store against data

def test_classify_refuses_a_store_that_no_longer_matches_the_folder(tiny_store, tmp_path,
                                                                    capsys, image_file):
    root = copy_dataset(tiny_store.root, tmp_path / "data" / "shapes")
    cache = tmp_path / "cache"
    assert main(["extract", *tiny_args(root, cache)]) == 0
    shutil.rmtree(root / "fox")  # a class removed
    image_file(root / "owl" / "owl_00.png", colour=(90, 90, 90))  # a class added
    image_file(root / "owl" / "owl_01.png", colour=(90, 90, 91), seed=3)
    image_file(root / "owl" / "owl_02.png", colour=(90, 91, 90), seed=4)
    changed = tiny_store.written["cat"][0]
    (root / changed).unlink()
    image_file(root / changed.replace(Path(changed).suffix, ".png"), seed=9)
    capsys.readouterr()
    assert main(["classify", *tiny_args(root, cache)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "1 class added (owl)" in line and "1 class removed (fox)" in line
    assert "images added" in line and "images removed" in line
    assert "featx extract" in line and str(root) in line
    assert not list(cache.glob("*.runs"))  # nothing was classified


def test_classify_with_an_explicit_store_checks_it_against_the_data(tiny_store, tmp_path,
                                                                    capsys, image_file):
    root = copy_dataset(tiny_store.root, tmp_path / "shapes")
    image_file(root / "cat" / "extra.png", seed=5)
    assert main(["classify", "--store", str(tiny_store.path), "--data", str(root),
                 "--out", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "1 image added (e.g. cat/extra.png)" in line and str(tiny_store.path) in line


# ----------------------------------------------------------------- 3. checksums on every read
# (a store's own checks, features and columns: tests/test_read.py)

@pytest.fixture
def own_store(tiny_store, tmp_path, make_config):
    """A private cache holding a copy of the tiny store, and its config."""
    path = copy_of_store(tiny_store.path, tmp_path / "cache")
    return make_config(tiny_store.root, path.parent), path


def test_a_fletcher32_failure_names_the_store(own_store, capsys):
    config, path = own_store
    with h5py.File(path, "r") as f:
        offset = f["features"].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + 16)
        fh.write(b"\xff\xfe\xfd\xfc")
    code = main(["classify", "--data", str(config.dataset.root), "--cache-dir",
                 str(path.parent), "--weights", "none", "--input-size", "32"])
    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(path) in line and "unreadable" in line and "featx extract" in line


def test_a_virtual_store_with_swapped_shard_files_is_refused(tiny_store, tmp_path,
                                                             make_config):
    from featx.features.distributed import ShardDir, _ShardWriter, join
    from featx.features.plan import plan, store_attrs

    config = make_config(tiny_store.root, tmp_path / "cache")
    p = plan(config)
    p.path.parent.mkdir(parents=True)
    n = len(p.dataset)
    shards = ShardDir(p.path, p.key, n, shard_rows=6)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(n, 8)).astype(np.float32)
    for s in range(shards.n_shards):
        writer = _ShardWriter(shards, s, (8,), "lzf")
        start, stop = shards.bounds(s)
        writer.write(np.arange(start, stop), features[start:stop], np.ones(stop - start, bool),
                     np.array([""] * (stop - start), dtype=object))
        writer.finish()
    join(p, shards, p.split, store_attrs(config, p), "lzf", consolidate=False)
    with FeatureStore(p.path) as store:
        np.testing.assert_array_equal(store.features(), features)
    a, b = shards.path(0), shards.path(1)
    a.rename(a.with_suffix(".x"))
    b.rename(a)
    a.with_suffix(".x").rename(b)
    with pytest.raises(StoreError, match="do not match the checksum"):
        with FeatureStore(p.path) as store:
            store.features()


def test_a_cache_hit_verifies_once_per_file_version(own_store, monkeypatch):
    config, path = own_store
    reads = []
    original = FeatureStore.verify

    def counting(self):
        reads.append(1)
        return original(self)

    monkeypatch.setattr(FeatureStore, "verify", counting)
    assert extract(config, progress=False).cache_hit and len(reads) == 1
    assert extract(config, progress=False).cache_hit and len(reads) == 1  # recorded
    os.utime(path)  # another version of the file: checked again
    assert extract(config, progress=False).cache_hit and len(reads) == 2


# ------------------------------------------------------------------- 4. damaged resume blocks

@pytest.mark.parametrize("damage", ["flipped bytes", "other numbers"])
def test_a_damaged_resume_block_is_recomputed_with_a_warning(tiny_store, make_config, tmp_path,
                                                             monkeypatch, capsys, damage):

    config = make_config(tiny_store.root, tmp_path / "cache")
    with FeatureStore(tiny_store.path) as store:
        expected = store.features()

    extract_killed_after_first_block(config, monkeypatch)
    block = next(tmp_path.glob("cache/*.partial/block-000000.npz"))
    if damage == "flipped bytes":
        data = bytearray(block.read_bytes())
        data[len(data) // 2:len(data) // 2 + 8] = b"\x00\xff" * 4
        block.write_bytes(bytes(data))
    else:  # a valid archive with other numbers, its checksum file left as it was
        with np.load(block) as z:
            parts = {k: z[k] for k in z.files}
        parts["features"] = parts["features"] + 1
        np.savez(block.open("wb"), **parts)
    capsys.readouterr()
    result = extract(config, progress=False)
    assert "discarding resume block" in capsys.readouterr().err
    assert result.extracted == tiny_store.rows  # the damaged block was extracted again
    with FeatureStore(result.path) as store:
        np.testing.assert_allclose(store.features(), expected, rtol=1e-4,
                                   atol=1e-4 * np.abs(expected).max())


# ------------------------------------------------------------------------- 5. manifests

def _csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([("path", "label"), *rows])
    path.write_text(buffer.getvalue())
    return path


def test_one_image_twice_with_two_labels_is_an_error_naming_both_rows(tmp_path, image_file):
    from featx.core.config import DatasetConfig
    from featx.data.dataset import DatasetError, load_dataset

    image_file(tmp_path / "a.png")
    image_file(tmp_path / "b.png", seed=1)
    manifest = _csv(tmp_path / "m.csv", [("a.png", "cat"), ("b.png", "dog"), ("./a.png", "dog")])
    with pytest.raises(DatasetError, match=r"m.csv:4: a.png .*'dog'.*'cat' at line 2"):
        load_dataset(DatasetConfig(manifest=str(manifest)))


def test_one_image_twice_with_one_label_is_used_once(tmp_path, image_file, capsys):
    from featx.core.config import DatasetConfig
    from featx.data.dataset import load_dataset

    image_file(tmp_path / "a.png")
    image_file(tmp_path / "b.png", seed=1)
    manifest = _csv(tmp_path / "m.csv", [("a.png", "cat"), ("b.png", "dog"), ("a.png", "cat")])
    ds = load_dataset(DatasetConfig(manifest=str(manifest), test=0.0))  # reading only
    assert ds.paths == ["a.png", "b.png"]
    assert "1 row repeats an earlier row" in capsys.readouterr().err


def test_manifest_paths_are_relative_to_the_csv_and_never_leave_the_root(tmp_path, image_file):
    from featx.core.config import DatasetConfig
    from featx.data.dataset import DatasetError, load_dataset

    image_file(tmp_path / "images" / "a.png")
    image_file(tmp_path / "outside.png")
    lists = tmp_path / "images" / "lists"
    lists.mkdir()
    ok = _csv(lists / "ok.csv", [("../a.png", "cat")])
    ds = load_dataset(DatasetConfig(manifest=str(ok), root=str(tmp_path / "images"),
                                    test=0.0))  # reading only
    assert ds.paths == ["a.png"]
    escaping = _csv(tmp_path / "images" / "up.csv", [("../outside.png", "cat")])
    with pytest.raises(DatasetError, match=r"up.csv:2: \.\./outside.png is not under"):
        load_dataset(DatasetConfig(manifest=str(escaping)))


def test_extract_reports_files_with_the_same_bytes(tiny_store, tmp_path, capsys):
    root = copy_dataset(tiny_store.root, tmp_path / "shapes")
    original = tiny_store.written["dog"][0]
    shutil.copy(root / original, root / "cat" / ("copy" + Path(original).suffix))
    cache = tmp_path / "cache"
    assert main(["extract", *tiny_args(root, cache)]) == 0
    out = capsys.readouterr().out
    assert "featx: 1 image with the same bytes as another image" in out
    key = next(cache.glob("*.h5")).stem.rsplit("-", 1)[-1]
    assert main(["cache", "info", key, "--cache-dir", str(cache)]) == 0
    assert original in capsys.readouterr().out


def _brute_duplicates(dataset) -> list[tuple[str, str]]:
    """Every file hashed: (path, first earlier path with the same bytes)."""
    import hashlib

    first: dict[bytes, str] = {}
    out = []
    for i, rel in enumerate(dataset.paths):
        digest = hashlib.sha256(Path(dataset.absolute(i)).read_bytes()).digest()
        if digest in first:
            out.append((rel, first[digest]))
        else:
            first[digest] = rel
    return out


def test_duplicates_updated_from_the_old_store_equal_every_file_hashed(tmp_path):
    """Hard links, copies, same-size files with other bytes; then images added (copies and
    links of old ones), removed (the first of a group among them) and rewritten: the
    update, which reads only the sizes that changed, finds what hashing every file finds."""
    from featx.data.dataset import DatasetConfig, load_dataset
    from featx.features.extraction import duplicate_files, duplicate_rows

    rng = np.random.default_rng(0)
    root = tmp_path / "d"
    blobs = [rng.bytes(int(rng.choice([40, 40, 41, 57]))) for _ in range(12)]
    for i in range(120):
        folder = root / f"c{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"img{i:03d}.jpg"
        if i >= 60 and i % 4 == 0:  # a hard link of an earlier file
            os.link(root / f"c{(i - 7) % 3}" / f"img{i - 7:03d}.jpg", target)
        else:
            target.write_bytes(blobs[int(rng.integers(len(blobs)))])

    def dataset():
        d = load_dataset(DatasetConfig(root=str(root)))
        return d, d.signatures(listed=True)

    old, old_sigs = dataset()
    old_pairs = duplicate_rows(old, old_sigs)
    assert duplicate_files(old, old_sigs) == _brute_duplicates(old)
    assert len(old_pairs) > 50
    first_rows = sorted({int(b) for b in old_pairs[:, 1]})
    for row in first_rows[:3]:  # the earlier image of a group goes
        Path(old.absolute(row)).unlink()
    os.link(old.absolute(5), root / "c2" / "zz-link.jpg")
    shutil.copy(old.absolute(9), root / "c0" / "aa-copy.jpg")
    (root / "c1" / "new-unique.jpg").write_bytes(b"x" * 41)
    rewritten = Path(old.absolute(int(old_pairs[-1, 0])))
    rewritten.unlink()  # not in place: a new inode and size
    rewritten.write_bytes(b"y" * 57)
    now, now_sigs = dataset()
    updated = duplicate_rows(now, now_sigs, (old.paths, old_sigs, old_pairs))
    assert np.array_equal(updated, duplicate_rows(now, now_sigs))
    assert duplicate_files(now, now_sigs, (old.paths, old_sigs, old_pairs)) == \
        _brute_duplicates(now)


# ----------------------------------------------------------- 6. one-line errors, not crashes

@pytest.mark.parametrize("value", ["0", "-5"])
def test_a_batch_size_below_one_is_a_one_line_error(tiny_store, tmp_path, capsys, value):
    cache = tmp_path / "cache"
    args = tiny_args(tiny_store.root, cache)
    args[args.index("--batch-size") + 1] = value
    assert main(["extract", *args]) == 2
    assert "extract.batch_size" in one_error_line(capsys.readouterr().err)
    assert not cache.exists() or not list(cache.iterdir())  # no orphan .partial folder


@pytest.mark.parametrize("size, words", [("100000", "32 to 1024"), ("1", "32 to 1024")])
def test_an_input_size_out_of_range_names_the_setting(tiny_store, tmp_path, capsys, size,
                                                      words):
    args = tiny_args(tiny_store.root, tmp_path / "cache")
    args[args.index("--input-size") + 1] = size
    assert main(["extract", *args]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "backbone.input_size" in line and words in line and "weights" not in line


def test_a_dataset_with_one_class_is_a_one_line_error_naming_it(tmp_path, image_folder,
                                                                capsys):
    root = tmp_path / "one"
    image_folder(root, {"lonely": (10, 200, 10)}, per_class=6, junk=False)
    cache = tmp_path / "cache"
    for command in ("extract", "classify"):  # before any extraction
        assert main([command, *tiny_args(root, cache)]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "one class ('lonely')" in line and str(root) in line
    assert not cache.exists() or not any(cache.iterdir())


def test_a_class_with_too_few_training_images_is_named(tmp_path, image_folder, capsys):
    root = tmp_path / "few"
    image_folder(root, {"many": (10, 200, 10), "rare": (200, 10, 10)}, per_class=6, junk=False)
    for name in sorted((root / "rare").iterdir())[2:]:
        name.unlink()
    cache = tmp_path / "cache"
    # 2 images, half held out: one left to train on (a class of one image: test_dataset.py)
    args = tiny_args(root, cache, "--set", "dataset.test=0.5")
    assert main(["extract", *args]) == 0
    capsys.readouterr()
    assert main(["classify", *args]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "'rare' (1)" in line and "fewer than 2" in line


def test_a_dataset_of_unreadable_images_says_so(tmp_path, capsys):
    root = tmp_path / "broken"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            (root / cls / f"{i}.jpg").write_bytes(b"not a jpeg at all" * (i + 1))
    cache = tmp_path / "cache"
    assert main(["extract", *tiny_args(root, cache)]) == 0
    capsys.readouterr()
    assert main(["classify", *tiny_args(root, cache)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "none of its 8 images could be read" in line and "dataset.test" not in line


@pytest.mark.slow
def test_a_full_disk_names_the_file_it_could_not_write(tiny_store, tmp_path):
    import resource

    cache = tmp_path / "cache"
    # Python ignores SIGXFSZ: writes past the limit fail with EFBIG. The soft limit, this
    # process's own for the run, is raised back after it.
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))
    try:
        run = featx_here("extract", *tiny_args(tiny_store.root, cache))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert run.returncode == 2, run.stderr
    line = one_error_line(run.stderr)
    assert "File too large" in line and str(cache) in line


# --------------------------------------------------------- 7. foot-guns and injection

@pytest.mark.parametrize("part", ["empty", "blank", "first letter", "8 letters", "dataset"])
def test_cache_rm_refuses_an_empty_or_partial_key(own_store, capsys, part):
    _, path = own_store
    content_key = path.stem.rsplit("-", 1)[-1]
    key = {"empty": "", "blank": " ", "first letter": content_key[0],
           "8 letters": content_key[:8], "dataset": "shapes"}[part]
    assert main(["cache", "rm", key, "--cache-dir", str(path.parent)]) == 2
    one_error_line(capsys.readouterr().err)
    assert path.exists()


def test_cache_rm_takes_the_whole_key_or_all(own_store, capsys):
    _, path = own_store
    key = path.stem.rsplit("-", 1)[-1]
    assert main(["cache", "rm", "--cache-dir", str(path.parent)]) == 2
    assert path.exists()
    assert main(["cache", "rm", key, "--cache-dir", str(path.parent)]) == 0
    assert not path.exists()
    (path.parent / "other-MobileNetV2-avg-0123456789abcdef.h5.0123456789abcdef.partial").mkdir()
    assert main(["cache", "rm", "--all", "--cache-dir", str(path.parent)]) == 0
    assert list(path.parent.iterdir()) == []


def test_markdown_and_csv_outputs_are_escaped(tmp_path, image_file):
    from featx.learn.predict import Prediction, write_csv
    from featx.report.results import markdown

    name, broken = '<b>x</b> & "y"', "two\nlines | here"
    result = {"pipeline": "p", "classifier": "logreg", "rank1": 0.5, "rank5": 1.0,
              "per_class": {n: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
                            for n in (name, broken)},
              "confused_pairs": [{"true": name, "predicted": broken, "count": 1,
                                  "examples": ["<img src=x onerror=alert(1)>.png"]}]}
    text = markdown(result)
    assert "<b>" not in text and "<img" not in text and "&lt;b&gt;x&lt;/b&gt;" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert all(line.count(" | ") == line.replace("\\|", "").count(" | ") for line in rows)
    assert any(line.startswith("| two lines \\| here |") for line in rows)

    out = io.StringIO()
    write_csv([Prediction("=cmd|' /C calc'!A0.png",
                          [('=HYPERLINK("http://x","y")', 0.9), ("@SUM(1)", 0.1)])], out)
    cells = [row for row in csv.reader(io.StringIO(out.getvalue()))][1:]
    assert cells[0][0].startswith("'=") and cells[0][2] == "'" + '=HYPERLINK("http://x","y")'
    assert cells[1][2] == "'@SUM(1)" and not any(c[2].startswith(("=", "@")) for c in cells)


@pytest.mark.slow
def test_a_cache_hit_works_on_a_read_only_cache_folder(tiny_store):
    # The suite runs as root, for whom no folder is read-only: run featx as nobody.
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to run featx as another user")
    top = Path(tempfile.mkdtemp(prefix="featx-ro-"))
    try:
        os.chmod(top, 0o755)
        root = copy_dataset(tiny_store.root, top / "shapes")
        cache = top / "cache"
        cache.mkdir()
        shutil.copy2(tiny_store.path, cache / tiny_store.path.name)
        for p in [top, *top.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)  # readable by all, writable by root
        run = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
             sys.executable, "-m", "featx.cli", "extract", *tiny_args(root, cache)],
            cwd=REPO, capture_output=True, text=True, timeout=300,
            env={**os.environ, "HOME": str(top)})
        assert run.returncode == 0, run.stderr
        assert "cache hit" in run.stdout
        # and a store that needs extracting says which folder is not writable, in one line
        (root / "cat" / tiny_store.written["cat"][0].split("/")[-1]).unlink()
        run = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
             sys.executable, "-m", "featx.cli", "extract", *tiny_args(root, cache)],
            cwd=REPO, capture_output=True, text=True, timeout=300,
            env={**os.environ, "HOME": str(top)})
        assert run.returncode == 2
        assert f"cannot write to the cache folder {cache}" in one_error_line(run.stderr)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_a_renamed_and_changed_folder_is_diffed_against_its_old_store(tiny_store, tmp_path,
                                                                      capsys, image_file):
    root = copy_dataset(tiny_store.root, tmp_path / "data" / "shapes")
    cache = tmp_path / "cache"
    assert main(["extract", *tiny_args(root, cache)]) == 0
    renamed = root.rename(tmp_path / "data" / "renamed")
    for i in range(3):  # a class the split can hold out an image of
        image_file(renamed / "owl" / f"owl_{i:02d}.png", colour=(90, 90, 90 + i), seed=i)
    capsys.readouterr()
    assert main(["classify", *tiny_args(renamed, cache)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "shapes-MobileNetV2" in line and "1 class added (owl)" in line


def test_two_manifests_in_one_folder_keep_their_own_stores(tmp_path, image_file, make_config):
    for i in range(8):
        image_file(tmp_path / "images" / f"{i}.png", seed=i)
    rows = [(f"images/{i}.png", "ab"[i % 2]) for i in range(8)]
    first = extract(make_config(None, tmp_path / "cache", dataset={
        "root": "", "manifest": str(_csv(tmp_path / "one.csv", rows[:6]))}), progress=False)
    second = extract(make_config(None, tmp_path / "cache", dataset={
        "root": "", "manifest": str(_csv(tmp_path / "two.csv", rows[2:]))}), progress=False)
    assert second.path != first.path and first.path.is_file()  # not a version of the other
    assert second.reused == 4  # the rows the two share were not extracted again


def test_a_cache_hit_reads_the_duplicates_back_without_reading_images(tiny_store, tmp_path,
                                                                      make_config, monkeypatch):
    from featx.features import extraction

    root = copy_dataset(tiny_store.root, tmp_path / "shapes")
    original = tiny_store.written["dog"][0]
    shutil.copy(root / original, root / "cat" / ("copy" + Path(original).suffix))
    config = make_config(root, tmp_path / "cache")
    first = extract(config, progress=False)
    assert len(first.duplicates) == 1
    monkeypatch.setattr(extraction, "duplicate_rows", lambda *a: pytest.fail("files hashed"))
    again = extract(config, progress=False)
    assert again.cache_hit and again.duplicates == first.duplicates
