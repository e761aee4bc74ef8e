"""Duplicate groups and the grouped split (featx/data/groups.py): the neighbour search, the
groups, the split that keeps each group on one side; and, end to end, a planted set of
copies (exact, re-saved, cropped) of real flowers that no split of featx separates."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import featx_here, random_pngs, tiny_args
from realdata import FLOWERS17, WEIGHTS, needs_shared

from featx.core.config import Config, DatasetConfig
from featx.data.dataset import TEST, TRAIN, VAL, stratified_split
from featx.data.groups import (
    asked_counts,
    crossing_pairs,
    group_sizes,
    grouped_split,
    grouping_identity,
    near_duplicates,
    near_pair_arrays,
    split_counts,
    stratification,
    union_groups,
    unit_rows,
)


def _clusters(n: int, d: int = 32, classes: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)) * 3
    y = rng.integers(0, classes, n)
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


# --- the neighbour search (featx audit's too) -------------------------------------------------

def _ranked_pairs(x: np.ndarray, threshold: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: every row ranked in full (the N x N matrix), its k most similar
    others kept, those at the threshold or more."""
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    index = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return near_pair_arrays(np.take_along_axis(s, index, 1), index, threshold)


def test_near_duplicates_by_hand():
    x = unit_rows(np.array([[1, 0], [0.99, 0.1], [0, 1], [-1, 0], [0.1, 0.99]], np.float32))
    pairs, similarity, method = near_duplicates(x, 0.95, 2)
    assert method.startswith("exact")
    assert sorted(pairs.tolist()) == [[0, 1], [2, 4]]
    assert similarity[0] >= similarity[1] and similarity.dtype == np.float32
    assert similarity[pairs.tolist().index([0, 1])] == pytest.approx(float(x[0] @ x[1]))
    assert near_duplicates(x[:1], 0.95)[0].shape == (0, 2)  # one row: no pair


def test_near_pair_arrays_each_pair_once_most_similar_first():
    sims = np.array([[0.99, 0.5], [0.99, 0.97], [0.97, 0.1]], np.float32)
    index = np.array([[1, 2], [0, 2], [1, 0]])
    pairs, similarity = near_pair_arrays(sims, index, 0.95)
    assert pairs.tolist() == [[0, 1], [1, 2]]
    np.testing.assert_allclose(similarity, [0.99, 0.97])
    assert near_pair_arrays(sims, index, 0.98)[0].tolist() == [[0, 1]]
    pairs, similarity = near_pair_arrays(sims, index, 1.0)
    assert pairs.shape == (0, 2) and similarity.shape == (0,)
    # float32 products differ in the last bits by the side they come from: the higher kept
    pairs, similarity = near_pair_arrays(np.array([[0.97], [0.975]], np.float32),
                                         np.array([[1], [0]]), 0.95)
    assert pairs.tolist() == [[0, 1]] and similarity[0] == pytest.approx(0.975)


def test_the_exact_search_finds_what_ranking_every_row_finds(monkeypatch):
    """The same pairs and similarities as the full ranking, rows with more than k near
    duplicates (a burst of 15 copies) included, on blocks smaller than the data."""
    import featx.data.groups as groups_module

    x, _ = _clusters(600, d=48, seed=4)
    rng = np.random.default_rng(1)
    x[100:115] = x[99] + 0.01 * rng.normal(size=(15, 48))  # a burst: 15 copies of row 99
    x[300] = x[7] + 0.05 * rng.normal(size=48)
    x = unit_rows(x)
    expected = _ranked_pairs(x, 0.95, 10)
    monkeypatch.setattr(groups_module, "BLOCK_ELEMENTS", 600 * 64)  # 64 rows a block
    pairs, similarity, method = near_duplicates(x, 0.95, 10)
    assert method.startswith("exact") and len(pairs) > 100
    assert pairs.tolist() == expected[0].tolist()
    np.testing.assert_allclose(similarity, expected[1], rtol=1e-6)


def test_faiss_finds_what_the_exact_search_finds():
    pytest.importorskip("faiss")
    x, _ = _clusters(3000, d=64)
    rng = np.random.default_rng(2)
    copies = rng.choice(3000, 150, replace=False)
    x[copies] = x[(copies + 1) % 3000] + 0.02 * rng.normal(size=(150, 64))
    x = unit_rows(x)
    exact, _, _ = near_duplicates(x, 0.95)
    approx, similarity, method = near_duplicates(x, 0.95, exact_max=1000)
    assert method.startswith("faiss") and len(exact) >= 150
    found = {tuple(p) for p in approx.tolist()}
    recall = np.mean([tuple(p) in found for p in exact.tolist()])
    assert recall > 0.95, recall
    assert (similarity >= 0.95).all() and not (approx[:, 0] == approx[:, 1]).any()


# --- groups -----------------------------------------------------------------------------------

def test_groups_join_pairs_transitively_named_by_their_smallest_row():
    groups = union_groups(7, np.array([[5, 3], [3, 1]]), np.array([[6, 4]]))
    assert groups.dtype == np.int32
    assert groups.tolist() == [0, 1, 2, 1, 4, 1, 4]
    assert group_sizes(groups) == (2, 5)
    assert union_groups(3).tolist() == [0, 1, 2]
    assert union_groups(0).shape == (0,)


def test_crossing_pairs_counts_pairs_split_apart():
    split = np.array([TRAIN, TEST, TRAIN, VAL])
    assert crossing_pairs(np.array([[0, 1], [0, 2], [2, 3]]), split) == 2
    # an exact copy is also found as a near duplicate: one pair, counted once
    assert crossing_pairs(np.array([[1, 0], [0, 2], [2, 3], [0, 1]]), split) == 2
    assert crossing_pairs(np.empty((0, 2), np.int64), split) == 0


def test_grouping_identity_is_the_setting_and_its_threshold():
    assert grouping_identity(DatasetConfig()) == {"duplicates": True, "threshold": 0.95}
    assert grouping_identity(DatasetConfig(duplicate_threshold=0.9))["threshold"] == 0.9
    assert grouping_identity(DatasetConfig(group_duplicates=False)) == {"duplicates": False}


def test_the_threshold_is_a_checked_setting():
    from featx.core.config import ConfigError

    config = Config()
    config.assign("dataset.duplicate_threshold", 0.9, "test")
    assert config.dataset.duplicate_threshold == 0.9
    with pytest.raises(ConfigError, match="duplicate_threshold = 1.5 is out of range"):
        config.assign("dataset.duplicate_threshold", 1.5, "test")


# --- the grouped split ------------------------------------------------------------------------

LABELS = np.repeat(np.arange(5), [40, 23, 9, 60, 7])


@pytest.mark.parametrize("val,test", [(0.0, 0.25), (0.2, 0.25), (0.1, 0.5)])
@pytest.mark.parametrize("seed", [0, 42])
def test_without_copies_it_is_the_stratified_split(val, test, seed):
    expected = stratified_split(LABELS, val, test, seed)
    assert np.array_equal(grouped_split(LABELS, None, val, test, seed), expected)
    singletons = np.arange(len(LABELS)) * 3  # any ids, each once
    assert np.array_equal(grouped_split(LABELS, singletons, val, test, seed), expected)


def _planted_groups(labels: np.ndarray, seed: int, cross: int = 3) -> np.ndarray:
    """Groups of 2-4 rows of one class over about a third of the rows, and ``cross``
    groups joining rows of two classes (a copy labelled differently)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        at = 0
        while at + 4 <= len(rows) // 3:
            size = int(rng.integers(2, 5))
            pairs += [(rows[at], rows[at + j]) for j in range(1, size)]
            at += size
    for _ in range(cross):
        a, b = rng.choice(np.unique(labels), 2, replace=False)
        pairs.append((rng.choice(np.flatnonzero(labels == a)),
                      rng.choice(np.flatnonzero(labels == b))))
    return union_groups(len(labels), np.array(pairs))


def _max_group_rows(labels, groups, c):
    # the most rows of class c that one group holds
    return int(np.bincount(groups[labels == c]).max())


@pytest.mark.parametrize("val,test", [(0.0, 0.25), (0.2, 0.25)])
def test_every_group_on_one_side_in_every_split_and_classes_kept_in_proportion(val, test):
    groups = _planted_groups(LABELS, seed=3)
    assert group_sizes(groups)[0] >= 15
    for seed in range(42, 52):
        split = grouped_split(LABELS, groups, val, test, seed)
        for g in np.unique(groups):
            assert len(set(split[groups == g].tolist())) == 1, (seed, g)
        got, asked = split_counts(LABELS, split, 5), asked_counts(LABELS, 5, val, test)
        for c in range(5):  # each share within the largest group of the class
            tolerance = _max_group_rows(LABELS, groups, c)
            assert np.abs(got[c, 1:] - asked[c, 1:]).max() <= tolerance, (seed, c, got, asked)
            assert got[c, TRAIN] >= 1 and got[c, TEST] >= 1
        assert abs(int((split == TEST).sum()) - int(asked[:, TEST].sum())) <= 5
    assert not np.array_equal(grouped_split(LABELS, groups, val, test, 42),
                              grouped_split(LABELS, groups, val, test, 43))
    assert np.array_equal(grouped_split(LABELS, groups, val, test, 42),
                          grouped_split(LABELS, groups.copy(), val, test, 42))


def test_copies_are_tested_as_often_as_single_images():
    """A group is one draw: its rows land in the test split at the test share, as single
    rows do (met at whichever of its rows came first, a pair here was tested a third of
    the time against a quarter, and rank-1 leaned on the copies)."""
    labels = np.repeat(np.arange(4), 400)
    rng = np.random.default_rng(0)
    pairs = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:200].reshape(-1, 2)
                            for c in range(4)])
    groups = union_groups(len(labels), pairs)
    in_pairs = np.zeros(len(labels), bool)
    in_pairs[pairs.reshape(-1)] = True
    shares = [float(np.mean(grouped_split(labels, groups, 0.0, 0.25, seed)[in_pairs] == TEST))
              for seed in range(30)]
    assert abs(np.mean(shares) - 0.25) < 0.02, np.mean(shares)


def test_classes_untouched_by_groups_split_as_stratified():
    # groups only in class 3: classes 0-2 and 4 take the rows the stratified split gives them
    groups = np.arange(len(LABELS))
    rows3 = np.flatnonzero(LABELS == 3)
    groups[rows3[:10]] = rows3[0]
    split = grouped_split(LABELS, groups, 0.2, 0.25, 7)
    plain = stratified_split(LABELS, 0.2, 0.25, 7)
    other = LABELS != 3
    assert np.array_equal(split[other], plain[other])
    assert len(set(split[rows3[:10]].tolist())) == 1


def test_a_class_of_pairs_only_still_gets_a_test_image_and_keeps_a_training_one():
    # class 0: two pairs (asked: 1 test image); class 1: a pair and 3 single images
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
    groups = union_groups(9, np.array([[0, 1], [2, 3], [4, 5]]))
    for seed in range(20):
        split = grouped_split(labels, groups, 0.0, 0.25, seed)
        assert (split[labels == 0] == TEST).sum() == 2  # a whole pair: the nearest it gets
        assert (split[labels == 0] == TRAIN).sum() == 2
        assert (split[labels == 1] == TEST).sum() >= 1
        assert split[0] == split[1] and split[2] == split[3] and split[4] == split[5]


def test_a_group_that_is_a_whole_class_stays_in_training():
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    groups = union_groups(7, np.array([[0, 1], [1, 2]]))
    split = grouped_split(labels, groups, 0.0, 0.34, 0)
    assert (split[:3] == TRAIN).all()  # never a class's last training row
    assert (split[labels == 1] == TEST).sum() == 1


def test_a_group_across_classes_goes_whole_to_one_side():
    labels = np.repeat([0, 1], 20)
    groups = union_groups(40, np.array([[0, 20], [20, 1], [21, 2]]))
    for seed in range(10):
        split = grouped_split(labels, groups, 0.0, 0.25, seed)
        assert split[0] == split[20] == split[1] and split[21] == split[2]
        assert (split == TEST).sum() in (9, 10, 11)


def test_stratification_reports_each_class_against_its_share():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    split = np.array([TEST, TEST, TRAIN, TRAIN, TEST, TRAIN, TRAIN, TRAIN], np.int8)
    record = stratification(labels, split, ["a", "b"], 0.0, 0.25)
    assert record["per_class"]["a"] == {"train": 2, "val": 0, "test": 2, "asked_val": 0,
                                        "asked_test": 1}
    assert record["per_class"]["b"]["test"] == 1 and record["most_off"] == 1


# --- end to end: copies in a store, by the command line ----------------------------------------

def _copies_folder(root: Path) -> list[tuple[str, str]]:
    """Random PNGs, 8 per class, and 4 byte copies of some of them: (copy, original)."""
    random_pngs(root, n_per_class=8, classes=("ant", "bee", "cow"))
    pairs = [("ant/ant0_copy.png", "ant/ant0.png"), ("ant/ant0_again.png", "ant/ant0.png"),
             ("bee/bee5_copy.png", "bee/bee5.png"), ("cow/cow2_copy.png", "cow/cow2.png")]
    for copy, original in pairs:
        shutil.copyfile(root / original, root / copy)
    return pairs


def _rows(store: Path, pairs: list[tuple[str, str]]) -> np.ndarray:
    from featx.store.read import FeatureStore

    with FeatureStore(store) as s:
        index = {p: i for i, p in enumerate(s.paths)}
    return np.array([(index[a], index[b]) for a, b in pairs])


def test_byte_copies_stay_together_in_the_store_and_every_repeat(tmp_path):
    """Exact copies with random weights (which group nothing else): the stored split and
    each of classify's 4 repeated splits keep every copy beside its original; the store
    records the groups and how the split treats them."""
    from featx.learn.classification import index_splits, resplit, split_seeds
    from featx.store.read import FeatureStore

    pairs = _copies_folder(tmp_path / "data")
    args = tiny_args(tmp_path / "data", tmp_path / "cache")
    done = featx_here("extract", *args)
    assert done.returncode == 0, done.stderr
    (store,) = (tmp_path / "cache").glob("*.h5")
    rows = _rows(store, pairs)
    with FeatureStore(store) as s:
        found, split, labels, ok, paths = s.groups, s.split, s.labels, s.ok, s.paths
        assert s.grouping == {"duplicates": True, "threshold": 0.95}
        assert found.info["method"].startswith("none: random weights")
        assert found.info["exact_pairs"] == 4 and found.info["groups"] == 3
    assert (found.groups[rows[:, 0]] == found.groups[rows[:, 1]]).all()
    assert crossing_pairs(rows, split) == 0
    # without groups this data's split separates some copy from its original: the test
    # could not pass by chance
    plain = stratified_split(labels, 0.0, 0.25, 42)
    assert crossing_pairs(rows, plain) > 0
    config = Config()
    config.dataset.root, config.cache_dir = str(tmp_path / "data"), str(tmp_path / "cache")
    config.backbone.weights, config.backbone.input_size = "none", 32
    config.classify.repeats = 4
    data = index_splits(config, store)
    for seed in split_seeds(config):
        part = resplit(data, config, seed, labels, ok, paths, None)
        side = {p: s for s in (TRAIN, VAL, TEST) for p in part.paths[s]}
        assert all(side[a] == side[b] for a, b in pairs), seed
        assert part.duplicates["crossing_pairs"] == 0 and part.duplicates["groups"] == 3


def test_classify_says_what_the_split_does_with_copies(tmp_path):
    """Grouped: the groups kept together, in the line, the JSON and the page. Ungrouped
    (dataset.group_duplicates = false): a warning of the pairs that cross, naming featx
    audit, and the count in the JSON and the page."""
    import json

    from featx.store.read import FeatureStore

    pairs = _copies_folder(tmp_path / "data")
    args = tiny_args(tmp_path / "data", tmp_path / "cache")
    learn = ["--classifiers", "logreg", "--out", tmp_path / "out"]
    assert featx_here("extract", *args).returncode == 0
    done = featx_here("classify", *args, *learn)
    assert done.returncode == 0, done.stderr
    assert "the split keeps 3 duplicate groups (7 images) together" in done.stderr
    (result,) = (tmp_path / "out").glob("*/*-logreg.json")
    record = json.loads(result.read_text())["duplicates"]
    assert record["grouped"] and record["groups"] == 3 and record["crossing_pairs"] == 0
    assert set(record["per_class"]) == {"ant", "bee", "cow"}
    page = result.with_suffix(".html").read_text()
    assert "kept together: 3 groups of copies (7 images" in page

    off = [*args, "--set", "dataset.group_duplicates=false"]
    refused = featx_here("classify", *off, *learn)  # the grouped split is not the one asked for
    assert refused.returncode == 2
    assert "keeps duplicates together" in refused.stderr and "featx extract" in refused.stderr
    assert featx_here("extract", *off).returncode == 0  # re-split, no features again
    (store,) = (tmp_path / "cache").glob("*.h5")
    with FeatureStore(store) as s:
        crossing = crossing_pairs(_rows(store, pairs), s.split)
        assert np.array_equal(s.split, stratified_split(s.labels, 0.0, 0.25, 42))
    assert crossing > 0
    done = featx_here("classify", *off, *learn)
    assert done.returncode == 0, done.stderr
    word = "crosses" if crossing == 1 else "cross"
    assert f"{crossing} duplicate pair{'s' if crossing > 1 else ''} {word} the split" \
        in done.stderr and "featx audit" in done.stderr
    newest = max((tmp_path / "out").glob("*/*-logreg.json"), key=lambda p: p.stat().st_mtime)
    record = json.loads(newest.read_text())["duplicates"]
    assert not record["grouped"] and record["crossing_pairs"] == crossing
    assert f"{crossing} pair" in newest.with_suffix(".html").read_text()


def test_fine_tuning_splits_as_classify_does(tmp_path):
    """featx finetune's split keeps the copies together too (no store needed for exact
    copies), its early-stopping holdout as well."""
    from featx.learn.finetune import load_image_splits

    pairs = _copies_folder(tmp_path / "data")
    config = Config()
    config.dataset.root, config.cache_dir = str(tmp_path / "data"), str(tmp_path / "cache")
    config.backbone.weights, config.backbone.input_size = "none", 32
    config.finetune.holdout = 0.3
    for seed in (42, 43, 44):
        config.dataset.seed = seed
        got = load_image_splits(config)
        side = {p: s for s in (TRAIN, VAL, TEST) for p in got.paths[s]}
        assert all(side[a] == side[b] for a, b in pairs), seed
    config.dataset.group_duplicates = False
    config.dataset.seed = 42
    got = load_image_splits(config)
    side = {p: s for s in (TRAIN, VAL, TEST) for p in got.paths[s]}
    assert any(side[a] != side[b] for a, b in pairs)  # the old split: copies apart


# --- the planted set: copies of real flowers, real weights -------------------------------------

PLANTED = ("crocus", "daisy", "iris")


def _plant(root: Path) -> list[tuple[str, str, str]]:
    """12 Flowers-17 photos of each of 3 classes, and per class: an exact copy, two re-saved
    at JPEG quality 40 and two 97% centre crops. Returns (copy, original, how)."""
    from PIL import Image

    planted = []
    for cls in PLANTED:
        files = sorted((FLOWERS17 / cls).iterdir())[:12]
        (root / cls).mkdir(parents=True)
        for f in files:
            shutil.copyfile(f, root / cls / f.name)
        for k, f in enumerate(files[:5]):
            name = f"{cls}/{f.stem}"
            if k == 0:
                shutil.copyfile(f, root / f"{name}_copy.jpg")
                planted.append((f"{name}_copy.jpg", f"{cls}/{f.name}", "exact"))
                continue
            with Image.open(f) as img:
                img = img.convert("RGB")
                if k < 3:
                    img.save(root / f"{name}_q40.jpg", quality=40)
                    planted.append((f"{name}_q40.jpg", f"{cls}/{f.name}", "re-saved"))
                else:
                    w, h = img.size
                    dx, dy = int(w * 0.015), int(h * 0.015)
                    img.crop((dx, dy, w - dx, h - dy)).save(root / f"{name}_crop.jpg",
                                                            quality=90)
                    planted.append((f"{name}_crop.jpg", f"{cls}/{f.name}", "cropped"))
    return planted


@pytest.mark.slow
@pytest.mark.shared
@needs_shared
def test_planted_copies_never_straddle_a_split(tmp_path):
    """Exact copies, JPEG re-saves and crops of real flowers (ImageNet MobileNetV2 from the
    shared weights file): each is grouped with its original, and neither the stored split
    nor any of 5 repeated splits nor the audit's cross-split list separates a pair."""
    from featx.inspect.audit import audit_store
    from featx.learn.classification import index_splits, resplit, split_seeds
    from featx.store.read import FeatureStore

    planted = _plant(tmp_path / "data")
    args = ["--data", tmp_path / "data", "--cache-dir", tmp_path / "cache",
            "--weights", WEIGHTS, "--no-progress"]
    done = featx_here("extract", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    (store,) = (tmp_path / "cache").glob("*.h5")
    rows = _rows(store, [(a, b) for a, b, _ in planted])
    with FeatureStore(store) as s:
        found, split, labels, ok, paths = s.groups, s.split, s.labels, s.ok, s.paths
    assert found.info["method"].startswith("exact")
    together = found.groups[rows[:, 0]] == found.groups[rows[:, 1]]
    assert together.all(), [p for p, t in zip(planted, together) if not t]
    assert crossing_pairs(rows, split) == 0
    # and nothing else: no two of these 36 photos are alike enough
    assert group_sizes(found.groups) == (len(planted), 2 * len(planted))
    config = Config()
    config.dataset.root, config.cache_dir = str(tmp_path / "data"), str(tmp_path / "cache")
    config.backbone.weights = str(WEIGHTS)
    config.classify.repeats = 5
    data = index_splits(config, store)
    apart = 0
    for seed in split_seeds(config):
        part = resplit(data, config, seed, labels, ok, paths, None)
        side = {p: s for s in (TRAIN, VAL, TEST) for p in part.paths[s]}
        assert all(side[a] == side[b] for a, b, _ in planted), seed
        assert part.duplicates["most_off"] <= 1  # 19 or 17 per class: 4-5 test images
        apart += crossing_pairs(rows, stratified_split(labels, 0.0, 0.25, seed))
    assert apart > 0  # the plain splits would have separated some of them
    audit, info = audit_store(store, folds=2)
    assert not [(i, j) for i, j, _ in audit.near if info.split[i] != info.split[j]]
