"""The image reader: files -> fixed-size uint8 RGB batches, decoded in parallel threads (and
by tf.data where TensorFlow ops augment them).

Decoding uses Pillow (it releases the GIL while decoding and resizing)
because it reads what real photo folders hold: CMYK and progressive JPEGs, EXIF rotation,
16-bit and palette PNGs, animated GIFs, WebP. A file that cannot be read becomes a zero
image with ``ok=False`` and a recorded reason; it never stops the run.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from featx.core.log import import_tensorflow

# How a file becomes the backbone's input: part of what the features depend on.
READ_POLICY = "pil-draft+exif+rgb-on-white+bilinear"  # + the resize policy, in the settings
PAD_COLOUR = (124, 116, 104)  # ImageNet's mean RGB: padding that reads as "nothing there"
# 10-crop over-sampling reads the image at input_size * 256/224 (the classic recipe).
CROP_RATIO = 256 / 224


def load_image(path: str, size: int, resize: str = "squash") -> np.ndarray:
    """Read one image as a (size, size, 3) uint8 RGB array; raises on anything unreadable."""
    with warnings.catch_warnings():
        # Above Pillow's pixel limit a warning comes first; treat it as the bomb it is.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            if img.format == "JPEG":
                # libjpeg DCT scaling: decode at 1/2, 1/4 or 1/8 while still >= size.
                img.draft("RGB", (size, size))
            img.seek(0)  # animated GIF/WebP: the first frame
            img.load()
            # In place: an upright photo is not copied (copying it and again in convert("RGB")
            # cost 0.4 of the 2.3 ms a Flowers-17 JPEG took).
            ImageOps.exif_transpose(img, in_place=True)
            return _fitted(img, size, resize)


def fit_image(img: Image.Image, size: int, resize: str = "squash") -> np.ndarray:
    """A PIL image as a (size, size, 3) uint8 RGB array, exactly as :func:`load_image` makes
    one from a file (first frame, EXIF orientation, RGB on white, bilinear resampling).
    ``resize``: squash (the whole image, aspect ratio ignored), crop (short side to ``size``,
    the centre kept) or pad (long side to ``size``, padded with :data:`PAD_COLOUR`)."""
    img.seek(0)  # animated GIF/WebP: the first frame
    img.load()
    return _fitted(ImageOps.exif_transpose(img), size, resize)  # a copy: the caller's image


def _fitted(img: Image.Image, size: int, resize: str) -> np.ndarray:
    """An upright image (first frame) as :func:`fit_image` returns it."""
    img = _to_rgb(img)
    if resize == "squash":
        img = img.resize((size, size), Image.BILINEAR)
    elif resize == "crop":
        img = ImageOps.fit(img, (size, size), Image.BILINEAR)
    elif resize == "pad":
        img = ImageOps.pad(img, (size, size), Image.BILINEAR, color=PAD_COLOUR)
    else:
        raise ValueError(f"unknown resize policy {resize!r}")
    return np.asarray(img, dtype=np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit/float grayscale: scale to 0-255 instead of clipping at 255.
        a = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a * (255.0 / top), 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img if img.mode == "RGB" else img.convert("RGB")


def ten_crops(image: np.ndarray, size: int) -> np.ndarray:
    """(10, size, size, C): the four corners and the centre of ``image`` (H, W, C), in the
    order top-left, top-right, bottom-left, bottom-right, centre, then each mirrored
    left-right in the same order."""
    h, w = image.shape[:2]
    if h < size or w < size:
        raise ValueError(f"a {h}x{w} image is smaller than the {size}x{size} crop")
    corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size),
               ((h - size) // 2, (w - size) // 2)]
    crops = np.stack([image[t:t + size, x:x + size] for t, x in corners])
    return np.concatenate([crops, crops[:, :, ::-1]])


def crop_load_size(size: int) -> int:
    return int(round(size * CROP_RATIO))


@dataclass(frozen=True)
class Views:
    """How one image becomes ``count`` consecutive rows: ``crop`` runs on the decoded image
    (read at ``load_size``) in numpy, ``augment`` in the tf.data graph on the image read at the
    input size, seeded per image by ``seeds`` (so a view never depends on its batch)."""

    count: int = 1
    load_size: int = 0  # 0: the input size
    crop: Callable[[np.ndarray], np.ndarray] | None = None  # (L, L, 3) -> (count, S, S, 3)
    augment: Callable[[Any, Any], Any] | None = None  # ((S, S, 3) uint8, seed) -> (count, ...)
    seeds: np.ndarray | None = None  # int64 per file, for ``augment``


@dataclass
class ReadErrors:
    """Reasons for unreadable files, by row index (filled from the reader's threads)."""

    reasons: dict[int, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, index: int, reason: str) -> None:
        with self._lock:
            self.reasons[index] = reason


def _pooled(load: Callable[[int], tuple[np.ndarray, bool]], files: int, batch_size: int,
            count: int, threads: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """:func:`read_batches`' batches from ``load(i)`` -> (image, or ``count`` views, ok), run
    by ``threads`` threads at most 2 batches ahead (memory stays bounded)."""
    ahead = max(2 * batch_size // count, threads, 1)  # files submitted, not yet taken
    rows: list[np.ndarray] = []
    oks: list[bool] = []
    first = submitted = 0
    with ThreadPoolExecutor(threads, thread_name_prefix="featx-read") as pool:
        pending: deque[Future] = deque()
        try:
            while submitted < files or pending:
                while submitted < files and len(pending) < ahead:
                    pending.append(pool.submit(load, submitted))
                    submitted += 1
                image, ok = pending.popleft().result()
                rows.extend(image if count > 1 else [image])
                oks.extend([ok] * count)
                last = submitted == files and not pending
                while len(rows) >= batch_size or (last and rows):
                    take = min(batch_size, len(rows))
                    yield first, np.stack(rows[:take]), np.asarray(oks[:take], bool)
                    del rows[:take], oks[:take]
                    first += take
        finally:
            for future in pending:
                future.cancel()


def usable_cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def read_batches(
    paths: Sequence[str], size: int, batch_size: int, errors: ReadErrors,
    parallel: int | None = None, views: Views | None = None, resize: str = "squash",
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(first_row, images, ok)`` for every row in order, ``batch_size`` at a time
    (each image read by :func:`load_image` with the ``resize`` policy).

    ``images`` is (n, size, size, 3) uint8; ``ok[i]`` is False where the file was unreadable
    (its reason is in ``errors``, by file index). With ``views``, file ``i`` gives rows
    ``i * views.count`` to ``(i + 1) * views.count - 1``.

    Files are decoded by ``parallel`` threads (default: one per core) a few batches ahead of
    the consumer: in a plain thread pool, or in tf.data where ``views.augment`` (TensorFlow
    ops) runs on them. The pool costs less CPU a file: 1,020 Flowers-17 JPEGs/s against
    tf.data's 850 on 2 cores, which an OpenVINO backbone, sharing the cores, turns into
    about 5% more images/s.
    """
    views = views or Views()
    load_size = views.load_size or size
    shape = (size, size, 3) if views.crop is None else (views.count, size, size, 3)

    def load(index: np.int64) -> tuple[np.ndarray, bool]:
        i = int(index)
        try:
            image = load_image(str(paths[i]), load_size, resize)
            return (image if views.crop is None else views.crop(image)), True
        except Exception as e:  # any decoder failure is a per-file skip, never a crash
            errors.add(i, f"{type(e).__name__}: {e}")
            return np.zeros(shape, np.uint8), False

    if views.augment is None:
        yield from _pooled(load, len(paths), batch_size, views.count, parallel or usable_cores())
        return
    tf = import_tensorflow()
    seeds = np.zeros(len(paths), np.int64) if views.seeds is None else views.seeds

    def tf_load(index):
        image, ok = tf.numpy_function(load, [index], (tf.uint8, tf.bool), stateful=False)
        image.set_shape(shape)
        ok.set_shape(())
        if views.augment is not None:
            image = views.augment(image, tf.gather(seeds, index))  # (passes, S, S, 3)
            if views.count == 1:  # one pass: one row, as a plain read gives
                image = image[0]
        if views.count > 1:  # one row per view
            return image, tf.fill([views.count], ok)
        return image, ok

    # A fixed parallelism instead of tf.data's autotuner: the autotuner stalled 0.5-2 s at
    # the end of about half the reads here, and decoding is not the bottleneck anyway.
    options = tf.data.Options()
    options.autotune.enabled = False
    ds = (tf.data.Dataset.range(len(paths))
          .map(tf_load, num_parallel_calls=parallel or usable_cores(),
               deterministic=True))
    if views.count > 1:
        ds = ds.unbatch()
    ds = (ds.batch(batch_size)
          .prefetch(2)
          .with_options(options))
    first = 0
    for images, ok in ds.as_numpy_iterator():
        yield first, images, ok
        first += len(images)
