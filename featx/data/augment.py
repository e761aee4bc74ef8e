"""Augmented views of an image with Keras preprocessing layers, reproducible per image.

Keras' random layers draw from a stateful seed generator, so what an image gets would depend
on which batch it lands in and on how many images came before it (a resumed or incremental
extraction would differ from a fresh one). Here every image carries its own seed (see
``variants.image_seeds``) and the layers draw from that seed alone: the same image always
gets the same ``K`` views, whatever the batch, the order or the parallelism.

Imports Keras and TensorFlow: import it only where images are augmented.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from featx.core.config import AugmentParams


class _ImageSeed(keras.random.SeedGenerator):
    """A stateless stand-in for Keras' SeedGenerator: one fixed per-image seed, and a new
    stream for every draw (counted while the graph is traced). No variable, so the parallel
    calls of a tf.data map share no state."""

    def __init__(self, seed) -> None:  # deliberately not calling super(): no state variable
        self._seed = seed
        self._draws = 0

    def next(self, ordered: bool = True):
        self._draws += 1
        return self._seed + tf.constant([0, self._draws], tf.int64)


class Augmenter:
    """``views(image, seed)``: (S, S, 3) uint8 -> (passes, S, S, 3) uint8 in TF ops (it runs
    inside a ``tf.data`` map); the same (image, seed) always gives the same views."""

    def __init__(self, passes: int, params: AugmentParams | None = None) -> None:
        self.passes = passes
        self.params = params or AugmentParams()
        p = self.params
        self.layers = [
            keras.layers.RandomFlip(p.flip),
            keras.layers.RandomRotation(p.rotation),
            keras.layers.RandomZoom(p.zoom),
            keras.layers.RandomTranslation(p.translation, p.translation),
            keras.layers.RandomContrast(p.contrast),
        ]

    def views(self, image, seed):
        x = tf.cast(tf.tile(image[None], [self.passes, 1, 1, 1]), tf.float32)
        seeds = _ImageSeed(tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)]))
        for layer in self.layers:
            # On the batch of copies: each pass gets its own draw of every transformation.
            transformation = layer.get_random_transformation(x, training=True, seed=seeds)
            x = layer.transform_images(x, transformation, training=True)
        return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)
