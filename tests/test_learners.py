"""Something is learned, end to end, without ../shared: extract -> classify -> predict on
images whose classes differ visibly (one dominant colour per class), through an early layer
of a random-weight MobileNetV2 (the last layer's random features carry no signal: they
shrink to ~1e-12 and every image looks alike). A control with the same images in shuffled
class folders must score at chance: a store, split or label misalignment anywhere between
the three steps turns the first into the second."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from featx.data.dataset import TEST
from featx.features.extraction import extract
from featx.learn.classification import classify
from featx.learn.predict import Predictor
from featx.store.read import FeatureStore

PER_CLASS = 20  # 3 classes, a quarter of them (15 images) held out
EARLY = "block_1_expand_relu"  # random weights keep colour here (activations ~1e-2)
CHANCE = 1 / 3


def _shuffled_copy(root: Path, written: dict[str, list[str]], dest: Path) -> None:
    """The same files, dealt at random into the same class folders (as many each)."""
    files = [rel for rels in written.values() for rel in rels]
    order = np.random.default_rng(5).permutation(len(files))
    names = [name for name, rels in written.items() for _ in rels]
    for name, i in zip(names, order):
        target = dest / name / Path(files[i]).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / files[i], target)


def _end_to_end(config) -> tuple[dict, float]:
    """(classify's result, rank-1 of `predict` on the held-out image files)."""
    store = extract(config, progress=False).path
    (result,) = classify(config, store)
    with FeatureStore(store) as s:
        rows = np.flatnonzero(s.split == TEST)
        paths = [str(Path(config.dataset.root) / s.paths[i]) for i in rows]
        truth = [s.label_names[c] for c in s.labels[rows]]
    predictor = Predictor.load(Path(config.out) / result["run"] / result["model"])
    predicted = [p.labels[0][0] for p in predictor.top_k(paths, k=1)]
    assert len(predicted) == len(truth) == result["n_test"] == 15
    rank1 = float(np.mean([p == t for p, t in zip(predicted, truth)]))
    # the same model on the same held-out files, from the store and from the image files
    assert rank1 == pytest.approx(result["rank1"]), (rank1, result["rank1"])
    return result, rank1


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, image_folder):
    base = tmp_path_factory.mktemp("learning")
    written = image_folder(base / "colours", per_class=PER_CLASS, junk=False)
    _shuffled_copy(base / "colours", written, base / "shuffled")
    return base


def _config(make_config, base: Path, name: str):
    return make_config(base / name, base / "cache", name=name, out=str(base / f"out-{name}"),
                       backbone={"layer": EARLY}, classify={"classifiers": ["logreg"]})


def test_colours_are_learned_end_to_end(datasets, make_config):
    result, predict_rank1 = _end_to_end(_config(make_config, datasets, "colours"))
    assert result["rank1"] >= 0.9, result["rank1"]
    assert predict_rank1 >= 0.9, predict_rank1


def test_shuffled_class_folders_score_at_chance(datasets, make_config):
    result, predict_rank1 = _end_to_end(_config(make_config, datasets, "shuffled"))
    # 15 test images: chance is 5 right; 9 or more would be a leak, not luck. (Below chance
    # is no leak: a held-out image is missing from its own folder's training images, so a
    # classifier that learns colours well can even score 0 here.)
    assert result["rank1"] <= CHANCE + 0.25, result["rank1"]
    assert predict_rank1 <= CHANCE + 0.25, predict_rank1
