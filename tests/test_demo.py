"""featx.data.demo: scikit-learn's digits written once as a folder of PNGs, one class
folder a digit, dark ink on white."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import sklearn.datasets
from PIL import Image

from featx.data.demo import export_digits


@pytest.fixture
def three_digits(monkeypatch):
    """load_digits as three 8x8 images: 0-16 ink levels, targets 7, 1, 7."""
    images = np.zeros((3, 8, 8))
    images[0, 2:6, 3] = 16
    images[1, :, 4] = 8
    images[2, 0, :] = 4
    digits = SimpleNamespace(images=images, target=np.array([7, 1, 7]))
    monkeypatch.setattr(sklearn.datasets, "load_digits", lambda: digits)
    return digits


def test_every_digit_is_a_png_in_its_class_folder(tmp_path, three_digits):
    root = export_digits(tmp_path / "digits")
    assert root == tmp_path / "digits"
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*.png")) == \
        ["1/0001.png", "7/0000.png", "7/0002.png"]
    with Image.open(root / "7" / "0000.png") as img:
        assert img.mode == "L" and img.size == (8, 8)
        pixels = np.asarray(img)
    np.testing.assert_array_equal(pixels, 255 - three_digits.images[0] * 255 / 16)
    assert pixels[3, 3] == 0 and pixels[0, 0] == 255  # full ink black, paper white
    with Image.open(root / "1" / "0001.png") as img:
        assert np.asarray(img)[0, 4] == 128  # half ink: 255 - 127.5, rounded to even
    assert (root / ".complete").read_text() == "3 images\n"


def test_a_complete_folder_is_kept_an_unfinished_one_written_again(tmp_path, three_digits):
    root = export_digits(tmp_path / "digits")
    (root / "1" / "0001.png").unlink()
    export_digits(root)  # complete: nothing written
    assert not (root / "1" / "0001.png").exists()
    (root / ".complete").unlink()  # killed before the end: written again
    export_digits(root)
    assert (root / "1" / "0001.png").is_file() and (root / ".complete").is_file()


def test_the_real_digits_are_1797_images_of_ten_classes(tmp_path):
    root = export_digits(tmp_path / "digits")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert folders == [str(d) for d in range(10)]
    assert sum(1 for _ in root.rglob("*.png")) == 1797
