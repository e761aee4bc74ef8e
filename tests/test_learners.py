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


# ------------------------------------------------- a best value at the edge of the grid

def _imbalanced(seed: int = 0, n: tuple[int, int] = (40, 10)) -> tuple[np.ndarray, np.ndarray]:
    """Two classes, 4:1, one feature apart: the heavier the regularisation (smaller C), the
    more the minority class is given up (logreg's best C here: its largest, 1)."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n)
    x = np.c_[np.where(y == 1, 1.0, -1.0) + rng.normal(0, 1, len(y)),
              rng.normal(0, 1, (len(y), 3))]
    return x, y


def test_a_best_c_at_the_end_of_the_grid_is_a_warning_naming_the_next_grid(capsys):
    from featx.learn import learners

    x, y = _imbalanced()
    fitted = learners.fit("logreg", x, y, cv=3)
    assert fitted.best_params == {"clf__C": 1.0}
    (line,) = [w for w in capsys.readouterr().err.splitlines() if "featx: warning:" in w]
    assert "logreg: C=1 is the largest value tried (0.001, 0.01, 0.1, 1)" in line
    assert "try C in 1, 10, 100" in line
    assert "no setting changes the grid, edit LEARNERS in featx/learn/learners.py" in line
    # the same through a normalisation step (its parameters are prefixed model__)
    learners.fit("logreg", x, y, cv=3, normalize="l2")
    assert "logreg: C=1 is the largest value tried" in capsys.readouterr().err
    # with --quick: the full grid goes further, and says so
    learners.fit("logreg", x, y, cv=3, quick=True)
    assert "logreg: C=0.1 is the largest value tried (0.01, 0.1); the full grid " \
        "(classify.quick = false) tries C up to 1" in capsys.readouterr().err


def test_a_best_c_inside_the_grid_or_tied_with_one_is_no_warning(capsys):
    from featx.learn import learners

    x, y = _imbalanced(n=(20, 20))
    x[:, 0] = np.where(y == 1, 10.0, -10.0)  # any C separates them: every candidate ties
    learners.fit("logreg", x, y, cv=3)
    assert "value tried" not in capsys.readouterr().err
    grid = {"clf__C": [0.01, 0.1, 1.0]}
    params = [{"clf__C": c} for c in grid["clf__C"]]
    assert learners.warn_at_edges("logreg", grid, params, [0.5, 0.9, 0.7]) == []
    assert learners.warn_at_edges("logreg", grid, params, [0.9, 0.9, 0.7]) == []  # a tie


def test_every_numeric_grid_is_checked_and_its_next_values_are_valid():
    from sklearn.model_selection import ParameterGrid

    from featx.learn import learners

    grid = learners.LEARNERS["rbf_svm"].grid
    params = list(ParameterGrid(grid))
    # best: the largest C with the smallest gamma, and nothing else
    scores = [p["clf__C"] / 100 - p["clf__gamma"] for p in params]
    said = learners.warn_at_edges("rbf_svm", grid, params, scores)
    assert [line.split(" is the")[0] for line in said] == ["rbf_svm: C=100", "rbf_svm: gamma=0.1"]
    assert "try C in 100, 1000, 10000" in said[0] and "smallest value tried" in said[1]
    knn = learners.LEARNERS["knn"].grid
    params = [{"n_neighbors": k} for k in knn["n_neighbors"]]
    # one neighbour is the fewest there are: nothing lies past it
    assert learners.warn_at_edges("knn", knn, params, [0.9, 0.5, 0.5, 0.5]) == []
    (line,) = learners.warn_at_edges("knn", knn, params, [0.5, 0.5, 0.5, 0.9])
    assert "knn: n_neighbors=20 is the largest value tried" in line
    assert "try n_neighbors in 20, 40, 80" in line
