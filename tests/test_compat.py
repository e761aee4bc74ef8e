"""Files made by earlier versions keep working: model files saved by featx 0.4.1 (before the
package was split into subpackages; their types are named ``featx.learners.*``) load and
predict as they did then. ``tests/data/compat-0.4.1/make.py`` made them, with 0.4.1."""

from __future__ import annotations

import json
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
