"""Files made by earlier versions keep working: model files saved by featx 0.4.1 (before the
package was split into subpackages; their types are named ``featx.learners.*``) load and
predict as they did then. ``tests/data/compat-0.4.1/make.py`` made them, with 0.4.1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import featx

DATA = Path(__file__).resolve().parent / "data" / "compat-0.4.1"
EXPECTED = json.loads((DATA / "expected.json").read_text())


@pytest.mark.parametrize("classifier", ["logreg", "sgd"])
def test_a_model_file_of_0_4_1_predicts_as_it_did(classifier):
    assert EXPECTED["featx"] == "0.4.1"
    want = EXPECTED[classifier]
    model = featx.load_model(DATA / f"featx-0.4.1-{classifier}.skops")
    got = model.predict_proba([str(DATA / "images" / name) for name in want["files"]])
    np.testing.assert_allclose(got, want["proba"], atol=2e-6)
    assert got.argmax(axis=1).tolist() == [0, 1, 2]  # cat, dog, fox: a result worth keeping


def test_a_store_of_0_4_1_is_a_cache_hit(tmp_path):
    """A plain store written by 0.4.1 (signatures by content: a checkout's mtimes are new) is
    found and used as it is: no model work, the same features."""
    from featx.core.config import Config
    from featx.features.extraction import extract
    from featx.store.read import FeatureStore

    data = shutil.copytree(DATA / "data", tmp_path / "data")
    cache = tmp_path / "cache"
    cache.mkdir()
    [written] = (DATA / "store").glob("*.h5")
    shutil.copy(written, cache / written.name)
    with FeatureStore(cache / written.name) as store:
        before = store.features()
    c = Config()
    c.dataset.root, c.dataset.hash, c.dataset.test = str(data), "content", 0.25
    c.backbone.weights, c.backbone.input_size = "none", 32
    c.extract.batch_size = 8
    c.cache_dir = str(cache)
    result = extract(c, progress=False)
    assert result.cache_hit and result.path.name == written.name and result.rows == 24
    with FeatureStore(result.path) as store:
        np.testing.assert_array_equal(store.features(), before)
