"""Real data and real weights from ``../shared`` (skipped cleanly where it is absent).

Flowers-17 through ImageNet MobileNetV2 + logistic regression, with ``weights="imagenet"``
served offline from a temporary ``KERAS_HOME/models/`` seeded with the shared weights file,
exactly as a warm Keras cache serves it on a user's machine.

Keras reads ``KERAS_HOME`` once, when it is imported; the test session has imported it long
before these tests run. So the extraction runs ``featx extract`` with Keras' own setting
pointed at that folder (``realdata.keras_home_set``), and the checks read the store here.
"""

from __future__ import annotations

import socket
import subprocess

import numpy as np
import pytest

# The Flowers-17 store is a fixture of the whole session (conftest.py), shared with the other
# real-data tests: it is extracted once.
from realdata import FLOWERS17, assert_pretrained, keras_home_set, needs_shared, store_of

from featx.core.config import BackboneConfig
from featx.data.dataset import TEST
from featx.features.backbones import Backbone, BackboneError
from featx.features.extraction import extract
from featx.store.read import FeatureStore


@pytest.mark.slow
@pytest.mark.shared
@needs_shared
def test_flowers17_store(flowers17):
    labels_on_disk = sorted(p.name for p in FLOWERS17.iterdir() if p.is_dir())
    with FeatureStore(store_of(flowers17)) as store:
        assert len(store) == 1360
        assert store.label_names == labels_on_disk and len(labels_on_disk) == 17
        assert store.ok.all() and store.skipped == []
        attrs = store.attrs
        assert attrs["weights"] == "imagenet" and attrs["input_size"] == 224
        assert attrs["split"] == {"val": 0.0, "test": 0.25, "seed": 42}
        labels, split = store.labels, store.split
        feats = store.features(np.arange(0, 1360, 97))
    for c in range(17):
        n = int((labels == c).sum())
        n_test = int(((labels == c) & (split == TEST)).sum())
        assert abs(n_test - 0.25 * n) <= 0.5, (labels_on_disk[c], n_test, n)
    assert feats.shape == (15, 1280)
    assert_pretrained(feats)


@pytest.mark.slow
@pytest.mark.shared
@needs_shared
def test_flowers17_rank1_and_rank5(flowers17, flowers17_logreg):
    with FeatureStore(store_of(flowers17)) as store:
        # fail in a second, not after minutes of fitting, when the features are not real
        assert_pretrained(store.features(np.arange(0, 1360, 97)))
    r, model = flowers17_logreg
    assert r["classifier"] == "logreg" and model.is_file()
    assert r["n_test"] == 340 and r["n_train"] == 1020
    assert r["rank1"] >= 0.92, r["rank1"]
    assert r["rank5"] >= 0.99, r["rank5"]


@pytest.mark.slow
@pytest.mark.shared
@needs_shared
def test_flowers17_second_extract_is_a_cache_hit_here(flowers17, monkeypatch):
    """The key computed in this process finds the store the other process wrote."""
    def no_model(self):
        raise AssertionError("the backbone model was built")
    monkeypatch.setattr(Backbone, "model", property(no_model))
    result = extract(flowers17, progress=False)
    assert result.cache_hit and result.rows == 1360


def imagenet_probe(keras_home) -> subprocess.CompletedProcess:
    """Build ImageNet MobileNetV2 here with Keras' downloads in ``keras_home``: exit status 0
    and "built", or 3 and the BackboneError. A download that stalls fails after a minute
    without data (instead of hanging the test), saying "timed out"."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60)
    try:
        with keras_home_set(keras_home):
            backbone = Backbone(BackboneConfig(name="MobileNetV2", weights="imagenet",
                                               input_size=224))
            assert backbone.model is not None
    except BackboneError as e:
        return subprocess.CompletedProcess("probe", 3, f"BackboneError: {e}\n", "")
    finally:
        socket.setdefaulttimeout(previous)
    return subprocess.CompletedProcess("probe", 0, "built\n", "")


@pytest.mark.slow
def test_imagenet_weights_with_an_empty_keras_home_say_how_to_work_offline(tmp_path):
    keras_home = tmp_path / "keras"
    keras_home.mkdir()
    done = imagenet_probe(keras_home)
    if "timed out" in done.stdout:
        pytest.skip("the weights download neither failed nor finished (a slow network?)")
    if done.returncode == 0 and "built" in done.stdout:
        pytest.skip("this machine reached the network and downloaded the weights")
    assert done.returncode == 3, done.stderr[-3000:]
    message = done.stdout
    assert "BackboneError:" in message
    assert "--weights" in message and "WEIGHTS=" in message  # how to give a local file
    assert str(keras_home / "models") in message  # where a cached file would be found
