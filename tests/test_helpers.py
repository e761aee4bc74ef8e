"""The shared test helpers can fail: a comparison that passes anything proves nothing."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, one_error_line

from featx.store.read import FeatureStore


@pytest.fixture(scope="module")
def features(tiny_store) -> np.ndarray:
    """Random-weight features (~1e-12), as the tests compare them."""
    with FeatureStore(tiny_store.path) as store:
        return store.features()


def test_assert_close_passes_the_same_features_within_rounding(features):
    assert np.abs(features).max() < 1e-6  # tiny: an absolute 1e-5 would pass anything
    assert_close(features, features)
    assert_close(features * (1 + 1e-6), features)


@pytest.mark.parametrize("broken", ["zeros", "shuffled rows", "one row off", "scaled"])
def test_assert_close_fails_on_wrong_features(features, broken):
    if broken == "zeros":
        actual = np.zeros_like(features)
    elif broken == "shuffled rows":
        actual = features[np.random.default_rng(0).permutation(len(features))]
    elif broken == "one row off":
        actual = features.copy()
        actual[3] = features[4]
    else:
        actual = features * 1.01
    with pytest.raises(AssertionError):
        assert_close(actual, features)


def test_assert_close_refuses_all_zero_expected_features(features):
    with pytest.raises(AssertionError, match="all zero"):
        assert_close(np.zeros_like(features), np.zeros_like(features))


def test_assert_close_refuses_other_shapes(features):
    with pytest.raises(AssertionError):
        assert_close(features[:-1], features)


@pytest.mark.parametrize("err", [
    "Traceback (most recent call last):\n  ...\nfeatx: error: no such folder: /x\n",
    "featx: error: no such folder: /x\nfeatx: error: again\n",
    "no such folder: /x\n",
    "",
])
def test_one_error_line_fails_on_more_or_other_output(err):
    with pytest.raises(AssertionError):
        one_error_line(err)


def test_one_error_line_checks_the_path():
    assert one_error_line("\nfeatx: error: no such folder: /x/y\n", "/x/y").endswith("/x/y")
    with pytest.raises(AssertionError):
        one_error_line("featx: error: no such folder: /x/y\n", "/x/z")
