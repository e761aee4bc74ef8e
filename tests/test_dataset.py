"""Datasets: folder scan, CSV manifests, fingerprints, the stratified split, and the
datasets refused before any extraction (too few classes, images or held-out images)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import one_error_line, tiny_args

from featx.cli import main
from featx.core.config import DatasetConfig
from featx.data.dataset import (
    IMAGE_EXTENSIONS,
    TEST,
    TRAIN,
    VAL,
    DatasetError,
    load_dataset,
    manifest_digest,
    split_sizes,
    stratified_split,
)
from featx.features.backbones import Backbone

# Reading only: nothing held out, so none of the class checks (tested at the end) applies to
# these tiny folders of one image per class or one class.
READ = {"val": 0.0, "test": 0.0}


def _folder(root):
    return load_dataset(DatasetConfig(root=str(root), **READ))


def _manifest(manifest, root=None):
    return load_dataset(DatasetConfig(manifest=str(manifest), root=str(root) if root else "",
                                      **READ))


# ---------------------------------------------------------------------------------- folders

def test_folder_scan(tmp_path, image_folder):
    root = tmp_path / "animals"
    written = image_folder(root)
    ds = _folder(root)
    assert ds.label_names == sorted(written)  # sorted, whatever the creation order
    assert ds.paths == sorted(p for paths in written.values() for p in paths)
    assert ds.labels.dtype == np.int32 and len(ds.labels) == len(ds) == len(ds.paths)
    for rel, label in zip(ds.paths, ds.labels):
        assert rel.split("/")[0] == ds.label_names[label]
        assert not os.path.isabs(rel) and "\\" not in rel
    assert ds.name == "animals"
    assert ds.root.is_absolute()
    assert ds.absolute(0) == str(root.resolve() / ds.paths[0])


def test_stats_taken_by_a_pool_of_processes_equal_those_taken_here(tmp_path, image_folder,
                                                                   monkeypatch):
    from featx.data import dataset

    root = tmp_path / "animals"
    image_folder(root)
    first = _folder(root)
    os.link(first.absolute(0), Path(first.absolute(0)).with_name("zz-link.jpg"))
    here = _folder(root)
    assert len(here) == len(first) + 1
    monkeypatch.setattr(dataset, "PARALLEL_STAT_FILES", 1)
    monkeypatch.setattr(dataset, "usable_cores", lambda: 2)
    pooled = _folder(root)
    assert pooled.paths == here.paths and np.array_equal(pooled.labels, here.labels)
    for column in ("size", "mtime", "device", "inode"):
        assert np.array_equal(getattr(pooled.stats, column), getattr(here.stats, column))
    assert pooled.signatures(listed=True) == here.signatures()  # stat now, one by one
    first = os.stat(here.absolute(0))
    assert here.stats.size[0] == first.st_size and here.stats.inode[0] == first.st_ino
    assert len(set(here.stats.inode.tolist())) == len(here) - 1  # the hard link


def test_a_file_gone_between_listing_and_stat_is_not_in_the_dataset(tmp_path, image_folder,
                                                                   monkeypatch):
    from featx.data import dataset

    root = tmp_path / "animals"
    image_folder(root)
    listed = _folder(root)
    scan = dataset._scan

    gone = []

    def scan_then_lose_one(folder, prefix, names):
        scan(folder, prefix, names)
        gone.append(min(names))
        os.remove(os.path.join(root, gone[-1]))  # listed, then gone before its stat

    monkeypatch.setattr(dataset, "_scan", scan_then_lose_one)
    ds = _folder(root)
    assert len(gone) == 3 and not set(gone) & set(ds.paths)
    assert ds.paths == [p for p in listed.paths if p not in gone]
    assert len(ds.stats.size) == len(ds.labels) == len(listed) - 3
    assert [ds.label_names[i] for i in ds.labels] == [p.split("/")[0] for p in ds.paths]


def test_folder_scan_ignores_non_images_and_hidden_folders(tmp_path, image_folder):
    root = tmp_path / "animals"
    written = image_folder(root, junk=True)
    ds = _folder(root)
    listed = set(ds.paths)
    assert not any(p.endswith((".txt", ".db", ".DS_Store", ".csv")) for p in listed)
    assert not any(p.startswith(".") for p in listed)  # the hidden .thumbnails folder
    assert ".thumbnails" not in ds.label_names
    assert len(ds) == sum(len(v) for v in written.values())


@pytest.mark.parametrize("spell", [str.lower, str.upper, str.title], ids=["lower", "upper",
                                                                          "title"])
def test_every_listed_extension_in_any_case(tmp_path, spell, image_file):
    root = tmp_path / "d"
    expected = []
    for i, ext in enumerate(sorted(IMAGE_EXTENSIONS)):
        rel = f"only/img{i}{spell(ext)}"
        image_file(root / rel)  # the scan looks at names only; the content is any image
        expected.append(rel)
    ds = _folder(root)
    assert ds.paths == sorted(expected)


def test_name_from_config_wins(tmp_path, image_folder):
    image_folder(tmp_path / "d", per_class=1, junk=False)
    assert load_dataset(DatasetConfig(root=str(tmp_path / "d"), name="mine", **READ)).name \
        == "mine"


def test_missing_folder_names_the_path(tmp_path):
    missing = tmp_path / "no" / "such"
    with pytest.raises(DatasetError) as e:
        _folder(missing)
    assert str(missing) in str(e.value)


def test_folder_without_class_folders(tmp_path, image_file):
    image_file(tmp_path / "flat" / "a.png")  # images directly in the root: no classes
    with pytest.raises(DatasetError) as e:
        _folder(tmp_path / "flat")
    assert str(tmp_path / "flat") in str(e.value)


def test_empty_class_names_the_class_folder(tmp_path, image_folder):
    root = tmp_path / "d"
    image_folder(root, per_class=2, junk=False)
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError) as e:
        _folder(root)
    assert str(root / "empty") in str(e.value)


def test_no_dataset_given():
    with pytest.raises(DatasetError, match="dataset.root"):
        load_dataset(DatasetConfig())


# ---------------------------------------------------------------------------------- manifests

def _write_csv(path, rows, header=True):
    lines = (["path,label"] if header else []) + [f"{p},{lb}" for p, lb in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _manifest_rows(written):
    return [(p, name.upper()) for name, paths in written.items() for p in paths]


@pytest.mark.parametrize("header", [True, False], ids=["header", "no-header"])
def test_manifest(tmp_path, image_folder, header):
    written = image_folder(tmp_path, per_class=3, junk=False)
    rows = _manifest_rows(written)
    ds = _manifest(_write_csv(tmp_path / "list.csv", rows[::-1], header=header))
    assert ds.label_names == sorted({lb for _, lb in rows})
    assert ds.paths == sorted(p for p, _ in rows)
    expected = dict(rows)
    assert [ds.label_names[i] for i in ds.labels] == [expected[p] for p in ds.paths]
    assert ds.root == tmp_path.resolve() and ds.name == "list"


def test_a_manifest_header_may_name_its_columns_in_any_order_and_case(tmp_path, image_folder):
    rows = _manifest_rows(image_folder(tmp_path, per_class=2, junk=False))
    path = tmp_path / "m.csv"
    path.write_text("Label,PATH\n" + "".join(f"{lb},{p}\n" for p, lb in rows))
    ds = _manifest(path)
    expected = dict(rows)
    assert [ds.label_names[i] for i in ds.labels] == [expected[p] for p in ds.paths]


@pytest.mark.parametrize("header", ["filename,class", "path,class", "path"])
def test_another_manifest_header_is_an_error_naming_both(tmp_path, image_folder, header):
    rows = _manifest_rows(image_folder(tmp_path, per_class=2, junk=False))
    path = tmp_path / "wrong.csv"
    path.write_text(header + "\n" + "".join(f"{p},{lb}\n" for p, lb in rows))
    with pytest.raises(DatasetError, match=rf"wrong.csv:1: header '{header}': expected "
                                           r"'path,label' \(in any order\)"):
        _manifest(path)


def test_manifest_with_and_without_header_agree(tmp_path, image_folder):
    rows = _manifest_rows(image_folder(tmp_path, per_class=2, junk=False))
    a = _manifest(_write_csv(tmp_path / "a.csv", rows, header=True))
    b = _manifest(_write_csv(tmp_path / "b.csv", rows, header=False))
    assert a.paths == b.paths and a.label_names == b.label_names
    assert np.array_equal(a.labels, b.labels)


def test_manifest_paths_relative_to_the_csv_stored_relative_to_a_given_root(tmp_path,
                                                                            image_folder):
    images = tmp_path / "images"
    rows = _manifest_rows(image_folder(images, per_class=2, junk=False))
    (tmp_path / "lists").mkdir()
    from_csv = [(f"../images/{p}", lb) for p, lb in rows]
    ds = _manifest(_write_csv(tmp_path / "lists" / "m.csv", from_csv), root=images)
    assert ds.root == images.resolve() and ds.paths == sorted(p for p, _ in rows)


def test_manifest_absolute_paths_under_the_root_are_stored_relative(tmp_path, image_folder):
    rows = _manifest_rows(image_folder(tmp_path, per_class=2, junk=False))
    absolute = [(str(tmp_path.resolve() / p), lb) for p, lb in rows]
    ds = _manifest(_write_csv(tmp_path / "m.csv", absolute))
    assert ds.paths == sorted(p for p, _ in rows)


def test_manifest_absolute_path_outside_the_root_is_a_dataset_error(tmp_path, image_file):
    outside = image_file(tmp_path / "elsewhere" / "x.png")
    (tmp_path / "lists").mkdir()
    image_file(tmp_path / "lists" / "y.png")
    manifest = _write_csv(tmp_path / "lists" / "m.csv", [("y.png", "a"), (str(outside), "b")])
    with pytest.raises(DatasetError) as e:
        _manifest(manifest)
    assert str(outside) in str(e.value)


def test_manifest_missing_image_names_line_and_path(tmp_path, image_file):
    image_file(tmp_path / "a.png")
    manifest = _write_csv(tmp_path / "m.csv", [("a.png", "x"), ("gone.png", "y")])
    with pytest.raises(DatasetError) as e:
        _manifest(manifest)
    assert f"{manifest}:3" in str(e.value)  # line 3: header, a.png, gone.png
    assert str(tmp_path.resolve() / "gone.png") in str(e.value)


def test_manifest_not_found(tmp_path):
    with pytest.raises(DatasetError) as e:
        _manifest(tmp_path / "none.csv")
    assert str(tmp_path / "none.csv") in str(e.value)


def test_manifest_without_rows(tmp_path):
    manifest = _write_csv(tmp_path / "m.csv", [], header=True)
    with pytest.raises(DatasetError, match="no rows"):
        _manifest(manifest)


def test_manifest_row_without_label(tmp_path, image_file):
    image_file(tmp_path / "a.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na.png\n")
    with pytest.raises(DatasetError, match=r"m\.csv:2"):
        _manifest(manifest)


# ---------------------------------------------------------------------------------- manifest digest

def _digest(root, content=False):
    ds = _folder(root)
    return manifest_digest(ds, ds.signatures(content=content))


@pytest.mark.parametrize("content", [False, True], ids=["stat", "content"])
def test_digest_survives_a_move_and_sees_changes(tmp_path, image_folder, image_file, content):
    root = tmp_path / "a" / "data"
    image_folder(root, per_class=2, junk=False)
    before = _digest(root, content)
    moved = tmp_path / "b" / "data"
    shutil.copytree(root, moved)  # copy2: same bytes, sizes and mtimes
    assert _digest(moved, content) == before

    image_file(moved / "cat" / "new.png", seed=99)
    added = _digest(moved, content)
    assert added != before

    shutil.move(moved / "cat" / "new.png", moved / "dog" / "new.png")  # relabelled
    assert _digest(moved, content) not in (before, added)

    (moved / "dog" / "new.png").unlink()  # removed again: back to the original
    assert _digest(moved, content) == before


@pytest.mark.parametrize("content", [False, True], ids=["stat", "content"])
def test_digest_sees_a_rewritten_image(tmp_path, image_folder, image_file, content):
    root = tmp_path / "d"
    written = image_folder(root, per_class=2, junk=False)
    before = _digest(root, content)
    target = root / written["dog"][0]
    image_file(target, size=(90, 70), seed=5)  # different content and size
    assert _digest(root, content) != before


def test_content_signatures_ignore_mtime(tmp_path, image_folder):
    root = tmp_path / "d"
    written = image_folder(root, per_class=2, junk=False)
    ds = _folder(root)
    by_content, by_stat = ds.signatures(content=True), ds.signatures()
    assert len(by_content) == len(by_stat) == len(ds)
    target = root / written["cat"][0]
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10 * 10**9))  # touched, same bytes
    assert ds.signatures(content=True) == by_content
    assert ds.signatures() != by_stat


# ---------------------------------------------------------------------------------- split

LABELS = np.repeat(np.arange(4), [10, 17, 40, 3]).astype(np.int32)


def test_split_is_deterministic_per_seed():
    a = stratified_split(LABELS, 0.2, 0.25, seed=1)
    b = stratified_split(LABELS, 0.2, 0.25, seed=1)
    c = stratified_split(LABELS, 0.2, 0.25, seed=2)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.int8 and set(np.unique(a)) <= {TRAIN, VAL, TEST}


@pytest.mark.parametrize("val, test", [(0.0, 0.25), (0.2, 0.25), (0.1, 0.5), (0.0, 0.0)])
def test_split_proportions_per_class(val, test):
    split = stratified_split(LABELS, val, test, seed=0)
    for cls in np.unique(LABELS):
        rows = split[LABELS == cls]
        n = len(rows)
        assert (rows == TRAIN).sum() >= 1
        if n >= 10:  # large enough that no class-size cap applies: round to the nearest
            assert abs((rows == TEST).sum() - test * n) <= 0.5 + 1e-9
            assert abs((rows == VAL).sum() - val * n) <= 0.5 + 1e-9
    if test == 0:
        assert not (split == TEST).any()


@pytest.mark.parametrize("n", [1, 2, 3])
def test_every_class_keeps_a_training_image(n):
    labels = np.r_[np.zeros(n), np.ones(20)].astype(np.int32)
    split = stratified_split(labels, 0.45, 0.5, seed=0)
    assert (split[labels == 0] == TRAIN).sum() >= 1
    assert (split[labels == 1] == TRAIN).sum() >= 1


@pytest.mark.parametrize("val, test", [(-0.1, 0.2), (0.2, 1.0), (0.5, 0.5), (0.0, 1.5),
                                       (0.7, 0.4), (1.0, 0.0)])
def test_invalid_fractions_are_rejected(val, test):
    with pytest.raises(DatasetError, match="fractions"):
        stratified_split(LABELS, val, test, seed=0)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 10, 17, 40])
@pytest.mark.parametrize("val, test", [(0.0, 0.25), (0.2, 0.25), (0.1, 0.5), (0.45, 0.5),
                                       (0.0, 0.1)])
def test_split_sizes_are_those_of_the_split_for_every_seed(n, val, test):
    """What the class checks below rely on: how many images a class holds out depends on its
    size and the fractions alone, never on the seed."""
    labels = np.r_[np.zeros(n), np.ones(20)].astype(np.int32)
    for seed in range(5):
        split = stratified_split(labels, val, test, seed)[labels == 0]
        assert ((split == TEST).sum(), (split == VAL).sum()) == split_sizes(n, val, test)


# ------------------------------------------------------- datasets refused before extraction

def _classes(root, counts: dict[str, int], image_file):
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            image_file(root / name / f"{name}{i}.png", seed=10 * c + i)
    return root


def test_a_class_with_no_test_image_is_an_error_naming_it(tmp_path, image_file):
    """Issue 26's case: 20 images of a and 2 of b gave rank-1 1.000 on 5 test images, all of
    class a, without a word."""
    root = _classes(tmp_path / "d", {"a": 20, "b": 2}, image_file)
    with pytest.raises(DatasetError) as e:
        load_dataset(DatasetConfig(root=str(root), test=0.25))
    line = str(e.value)
    assert "\n" not in line and line.startswith(f"{root}: ")
    assert "class 'b' (2 images) gets no test image with dataset.test = 0.25" in line
    # what to do: the class size these fractions need (2 * 0.25 rounds to none), the opt-in
    assert "a class needs at least 3" in line and "dataset.allow_missing_test = true" in line
    assert "'a'" not in line  # 5 test images: not named
    load_dataset(DatasetConfig(root=str(root), test=0.4))  # 2 * 0.4 rounds to one: no error


def test_a_small_class_of_a_manifest_names_the_manifest_and_a_fraction_that_works(
        tmp_path, image_file):
    root = _classes(tmp_path / "d", {"a": 20, "b": 4}, image_file)
    manifest = _write_csv(tmp_path / "m.csv", [(f"d/{p.parent.name}/{p.name}", p.parent.name)
                                               for p in sorted(root.rglob("*.png"))])
    with pytest.raises(DatasetError) as e:
        load_dataset(DatasetConfig(manifest=str(manifest), test=0.1))
    line = str(e.value)
    assert line.startswith(f"{manifest}: class 'b' (4 images) gets no test image")
    assert "raise dataset.test above 0.125" in line  # 4 * 0.13 rounds to one
    ds = load_dataset(DatasetConfig(manifest=str(manifest), test=0.13))
    split = stratified_split(ds.labels, 0.0, 0.13, 42)
    assert (split[ds.labels == 1] == TEST).sum() == 1


def test_a_class_with_no_validation_image_is_an_error(tmp_path, image_file):
    root = _classes(tmp_path / "d", {"a": 20, "b": 3, "c": 3}, image_file)
    with pytest.raises(DatasetError) as e:
        load_dataset(DatasetConfig(root=str(root), val=0.1, test=0.25))
    line = str(e.value)
    assert "classes 'b' (3 images), 'c' (3 images) get no validation image with " \
        "dataset.val = 0.1" in line
    assert "dataset.val = 0" in line and "dataset.allow_missing_test" in line


def test_allow_missing_test_makes_it_a_warning(tmp_path, image_file, capsys):
    root = _classes(tmp_path / "d", {"a": 20, "b": 2}, image_file)
    config = DatasetConfig(root=str(root), test=0.25)
    config.allow_missing_test = True
    ds = load_dataset(config)
    assert ds.label_names == ["a", "b"] and len(ds) == 22
    err = capsys.readouterr().err
    assert f"featx: warning: {root}: class 'b' (2 images) gets no test image" in err
    assert "dataset.allow_missing_test = true" in err


@pytest.mark.parametrize("counts, named", [
    ({"many": 6, "rare": 1}, "class 'rare' (1 image) has fewer than 2 images"),
    ({"a": 1, "b": 1, "c": 6}, "classes 'a' (1 image), 'b' (1 image) have fewer than 2 "),
    ({"lonely": 6}, "one class ('lonely'); classifying needs at least two"),
])
def test_too_few_classes_or_images_are_one_line_naming_them(tmp_path, image_file, counts,
                                                            named):
    root = _classes(tmp_path / "d", counts, image_file)
    with pytest.raises(DatasetError) as e:
        load_dataset(DatasetConfig(root=str(root)))
    assert str(e.value).startswith(f"{root}: {named}") and "\n" not in str(e.value)
    manifest = _write_csv(tmp_path / "m.csv", [(f"d/{p.parent.name}/{p.name}", p.parent.name)
                                               for p in sorted(root.rglob("*.png"))])
    with pytest.raises(DatasetError, match=rf"^{manifest}: {re.escape(named)}"):
        load_dataset(DatasetConfig(manifest=str(manifest)))
    # nothing held out: only extracted (featx.FeatureExtractor's one-label manifests)
    assert len(load_dataset(DatasetConfig(root=str(root), test=0.0))) == sum(counts.values())


def test_featx_extract_refuses_them_before_building_the_model(tmp_path, image_file, capsys,
                                                              monkeypatch):
    monkeypatch.setattr(Backbone, "model", property(lambda self: pytest.fail("model built")))
    root = _classes(tmp_path / "d", {"a": 20, "b": 2}, image_file)
    cache = tmp_path / "cache"
    for command in ("extract", "classify"):
        assert main([command, *tiny_args(root, cache)]) == 2
        line = one_error_line(capsys.readouterr().err, root)
        assert "class 'b' (2 images) gets no test image" in line
    assert not [p for p in cache.rglob("*") if p.is_file()]  # no store, no partial blocks
