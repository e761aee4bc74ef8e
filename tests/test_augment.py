"""featx.data.augment: an image's augmented views depend on the image and its own seed
alone (not on its batch, its order or the parallelism of the tf.data map running them), and
are exact transformations of its pixels. (Reproducibility per seed: tests/test_variants.py.)"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from featx.core.config import AugmentParams
from featx.data.augment import Augmenter

IMAGES = np.random.default_rng(0).integers(0, 256, (4, 24, 24, 3), dtype=np.uint8)
SEEDS = np.array([11, 12, 13, 14], np.int64)


def _mapped(augmenter: Augmenter, order: list[int], parallel: int) -> dict[int, np.ndarray]:
    """The views of ``IMAGES[i]`` for i in ``order``, computed in a tf.data map."""
    images, seeds = tf.constant(IMAGES), tf.constant(SEEDS)
    ds = tf.data.Dataset.from_tensor_slices(np.asarray(order, np.int64)).map(
        lambda i: (i, augmenter.views(tf.gather(images, i), tf.gather(seeds, i))),
        num_parallel_calls=parallel)
    return {int(i): views for i, views in ds.as_numpy_iterator()}


def test_views_do_not_depend_on_order_or_parallelism():
    augmenter = Augmenter(3)
    first = _mapped(augmenter, [0, 1, 2, 3], 1)
    again = _mapped(Augmenter(3), [3, 1, 0, 2], 4)
    for i in range(4):
        assert first[i].shape == (3, 24, 24, 3) and first[i].dtype == np.uint8
        np.testing.assert_array_equal(first[i], again[i])
    assert not np.array_equal(first[0][0], first[1][0])  # another image, another draw


def test_a_flip_alone_gives_the_image_or_its_mirror_exactly():
    still = AugmentParams(flip="horizontal", rotation=0.0, zoom=0.0, translation=0.0,
                          contrast=0.0)
    views = np.concatenate([Augmenter(8, still).views(IMAGES[0], np.int64(s)).numpy()
                            for s in (1, 2)])
    mirrored = [np.array_equal(v, IMAGES[0][:, ::-1]) for v in views]
    unchanged = [np.array_equal(v, IMAGES[0]) for v in views]
    assert all(m or u for m, u in zip(mirrored, unchanged))  # no other change to a pixel
    assert any(mirrored) and any(unchanged)  # 16 draws: both happen
