"""featx.data.images: files and PIL images to fixed-size RGB arrays, the resize policies,
ten crops, and the threaded batch reader (file order, row counts, unreadable files)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import BROKEN, make_corpus
from PIL import Image

from featx.data import images
from featx.data.images import (
    PAD_COLOUR,
    ReadErrors,
    Views,
    crop_load_size,
    fit_image,
    load_image,
    read_batches,
    ten_crops,
)


def test_awkward_images_are_read_correctly(tmp_path):
    make_corpus(tmp_path)
    g = tmp_path / "good"
    plain = load_image(str(g / "plain.jpg"), 32)
    assert plain.shape == (32, 32, 3) and plain.dtype == np.uint8
    assert plain[16, 2, 0] > 200 and plain[16, -3, 2] > 200  # red left, blue right
    cmyk = load_image(str(g / "cmyk.jpg"), 32)
    assert np.abs(cmyk.astype(int) - plain.astype(int)).mean() < 30
    gray = load_image(str(g / "gray.jpg"), 32)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    sixteen = load_image(str(g / "sixteen-bit.png"), 32)
    assert sixteen.max() > 200 and sixteen.min() < 10  # scaled to 0-255, not clipped
    assert len(np.unique(sixteen)) > 20
    rgba = load_image(str(g / "rgba.png"), 32)
    assert rgba[16, 2, 1] > 100  # half-transparent red on white is pinkish, not black
    rotated = load_image(str(g / "exif-rotated.jpg"), 32)
    # Rotated 90 degrees clockwise: red is now on top, blue at the bottom.
    assert rotated[2, 16, 0] > 200 and rotated[-3, 16, 2] > 200
    gif = load_image(str(g / "animated.gif"), 32)
    assert gif[..., 0].mean() > 200 and gif[..., 2].mean() < 50  # the first (red) frame
    webp = load_image(str(g / "photo.webp"), 32)
    assert webp[16, 2, 0] > 200


@pytest.mark.parametrize("rel", sorted(BROKEN))
def test_broken_files_raise_their_own_error_in_load_image(tmp_path, rel):
    make_corpus(tmp_path)
    kind, message = BROKEN[rel]
    with pytest.raises(kind, match=message) as e:
        load_image(str(tmp_path / rel), 32)
    assert type(e.value) is kind, type(e.value)


def test_vanished_file_is_a_recorded_skip(tmp_path):
    errors = ReadErrors()
    (first, images, ok), = list(read_batches([str(tmp_path / "gone.jpg")], 32, 4, errors))
    assert not ok[0]
    assert errors.reasons[0].startswith("FileNotFoundError: ") and "gone.jpg" in errors.reasons[0]


@pytest.mark.parametrize("batch, threads, count", [(4, 2, 1), (3, 3, 1), (5, 2, 3), (64, 1, 1)])
def test_the_reader_keeps_file_order_and_row_count_whatever_the_threads(
        tmp_path, image_file, batch, threads, count):
    """Batches of ``batch`` rows in file order (the last one short), ``count`` rows a file,
    an unreadable file in the middle a zero row with its reason, from any number of threads
    running ahead."""
    files = [str(image_file(tmp_path / f"{i:02d}.png", seed=i, size=(20 + i, 17)))
             for i in range(11)]
    files[6] = str(tmp_path / "gone.png")
    views = Views(count=count, crop=(lambda im: np.stack([im + k for k in range(count)]))
                  if count > 1 else None)
    errors = ReadErrors()
    batches = list(read_batches(files, 16, batch, errors, parallel=threads, views=views))
    rows = 11 * count
    assert [first for first, _, _ in batches] == list(range(0, rows, batch))
    assert [len(b) for _, b, _ in batches] == [min(batch, rows - f) for f in range(0, rows, batch)]
    images = np.concatenate([b for _, b, _ in batches])
    ok = np.concatenate([o for _, _, o in batches])
    assert images.shape == (rows, 16, 16, 3) and ok.dtype == bool
    for i, path in enumerate(files):
        got = images[i * count:(i + 1) * count]
        if i == 6:
            assert not ok[i * count:(i + 1) * count].any() and not got.any()
            continue
        assert ok[i * count:(i + 1) * count].all()
        for k in range(count):
            np.testing.assert_array_equal(got[k], load_image(path, 16) + k)
    assert list(errors.reasons) == [6] and "gone.png" in errors.reasons[6]


@pytest.fixture
def decoded_sizes(monkeypatch):
    """The size of every image as load_image hands it to the final resize."""
    sizes = []
    resize = Image.Image.resize

    def spy(self, size, *args, **kwargs):
        sizes.append(self.size)
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    return sizes


def test_large_jpegs_are_decoded_at_a_reduced_scale(tmp_path, decoded_sizes):
    """README: JPEGs much larger than the input are decoded at a reduced DCT scale (never
    below the input size); other formats are decoded whole. Either way, the same picture."""
    rng = np.random.default_rng(3)
    small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    big = Image.fromarray(small).resize((1600, 1200), Image.BILINEAR)  # smooth, 4:3
    big.save(tmp_path / "big.jpg", quality=95)
    big.save(tmp_path / "big.png")
    decoded_sizes.clear()  # (the resize above)
    from_jpeg = load_image(str(tmp_path / "big.jpg"), 224)
    from_png = load_image(str(tmp_path / "big.png"), 224)
    (jpeg_size, png_size) = decoded_sizes
    assert png_size == (1600, 1200)
    assert jpeg_size[0] <= 800 and jpeg_size[1] <= 600, jpeg_size  # 1/2 or less ...
    assert min(jpeg_size) >= 224, jpeg_size  # ... and never below the input size
    assert np.abs(from_jpeg.astype(int) - from_png.astype(int)).mean() < 8
    decoded_sizes.clear()
    load_image(str(tmp_path / "big.jpg"), 1000)  # hardly larger than the input: 1/1
    assert decoded_sizes == [(1600, 1200)]


# ------------------------------------------------------------------------ policies and crops

def _bands(width: int = 60, height: int = 20) -> Image.Image:
    """Three vertical bands, green | red | blue, each a third of the width."""
    pixels = np.zeros((height, width, 3), np.uint8)
    third = width // 3
    pixels[:, :third] = (0, 255, 0)
    pixels[:, third:2 * third] = (255, 0, 0)
    pixels[:, 2 * third:] = (0, 0, 255)
    return Image.fromarray(pixels)


def test_each_resize_policy_keeps_what_it_says():
    img = _bands()
    squashed = fit_image(img, 15, "squash")  # the whole picture: all three bands
    assert squashed.shape == (15, 15, 3) and squashed.dtype == np.uint8
    assert tuple(squashed[7, 1]) == (0, 255, 0) and tuple(squashed[7, 13]) == (0, 0, 255)
    cropped = fit_image(img, 15, "crop")  # short side to 15, the centre: the red band only
    assert (cropped[..., 0] > 200).all() and (cropped[..., 1:] < 60).all()
    padded = fit_image(img, 15, "pad")  # long side to 15: bands above and below padding
    assert tuple(padded[0, 7]) == PAD_COLOUR and tuple(padded[-1, 7]) == PAD_COLOUR
    assert tuple(padded[7, 1]) == (0, 255, 0) and tuple(padded[7, 13]) == (0, 0, 255)
    with pytest.raises(ValueError, match="'stretch'"):
        fit_image(img, 15, "stretch")


@pytest.mark.parametrize("resize", ["squash", "crop", "pad"])
def test_a_pil_image_becomes_what_its_file_becomes(tmp_path, resize):
    """fit_image (the Python API's PIL images) and load_image (files) give the very same
    array: RGBA on white, palette transparency, 16 bits, first frame, EXIF orientation.
    (Not JPEGs: a file is decoded at a reduced DCT scale where it is large, an image in
    memory is already decoded.)"""
    make_corpus(tmp_path)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    _bands().save(tmp_path / "good" / "exif-rotated.png", exif=exif)
    for name in ("rgba.png", "palette-alpha.png", "sixteen-bit.png", "animated.gif",
                 "exif-rotated.png"):
        path = tmp_path / "good" / name
        with Image.open(path) as img:
            from_pil = fit_image(img, 24, resize)
        np.testing.assert_array_equal(from_pil, load_image(str(path), 24, resize), name)


def test_fit_image_leaves_the_callers_image_as_it_was(tmp_path):
    make_corpus(tmp_path)
    with Image.open(tmp_path / "good" / "exif-rotated.jpg") as img:
        size, mode = img.size, img.mode
        fit_image(img, 16)
        assert (img.size, img.mode) == (size, mode)  # not rotated or converted in place


def test_ten_crops_are_the_corners_the_centre_and_their_mirrors():
    image = np.arange(7 * 9 * 1).reshape(7, 9, 1)
    crops = ten_crops(image, 4)
    assert crops.shape == (10, 4, 4, 1)
    expected = [image[:4, :4], image[:4, 5:], image[3:, :4], image[3:, 5:], image[1:5, 2:6]]
    for k, crop in enumerate(expected):
        np.testing.assert_array_equal(crops[k], crop)
        np.testing.assert_array_equal(crops[5 + k], crop[:, ::-1])  # mirrored left-right
    with pytest.raises(ValueError, match="7x9 image is smaller than the 8x8 crop"):
        ten_crops(image, 8)


def test_ten_crops_are_read_at_256_over_224_of_the_input():
    assert crop_load_size(224) == 256
    assert crop_load_size(32) == 37  # 36.57 rounded


def test_usable_cores_are_this_process_s_cores(monkeypatch):
    assert images.usable_cores() == len(os.sched_getaffinity(0))
    monkeypatch.delattr(os, "sched_getaffinity")  # macOS, Windows
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert images.usable_cores() == 3
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert images.usable_cores() == 1


def test_read_errors_keep_each_files_reason():
    errors = ReadErrors()
    errors.add(3, "OSError: broken")
    errors.add(1, "FileNotFoundError: gone")
    assert errors.reasons == {3: "OSError: broken", 1: "FileNotFoundError: gone"}
