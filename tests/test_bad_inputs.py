"""A corpus of awkward and broken files, generated here: each is read correctly or skipped
with its path and reason; nothing crashes and nothing already extracted is lost."""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import REPO, featx_command, one_error_line
from PIL import Image, UnidentifiedImageError
from PIL.Image import DecompressionBombError

from featx.core.config import Config
from featx.data.images import ReadErrors, Views, load_image, read_batches
from featx.features.extraction import ExtractError, extract
from featx.store.read import FeatureStore

RED, BLUE = (255, 0, 0), (0, 0, 255)

# Each broken file of the corpus: the exception load_image raises (exactly this type: a
# TypeError from a bug in the reader must not pass) and what its recorded reason says.
BROKEN = {
    "bad/zero-byte.png": (UnidentifiedImageError, "cannot identify image file"),
    "bad/random-bytes.jpg": (UnidentifiedImageError, "cannot identify image file"),
    "bad/text-file.png": (UnidentifiedImageError, "cannot identify image file"),
    "bad/truncated.jpg": (OSError, "Truncated File Read"),
    "bad/bomb.png": (DecompressionBombError, "could be decompression bomb"),
}


def _png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb by its header)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr:ihdr + 17]))
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def _jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def make_corpus(root: Path) -> dict[str, str]:
    """Write the corpus into class folders; return {relative path: 'ok' or 'skip'}."""
    good, bad = root / "good", root / "bad"
    good.mkdir(parents=True)
    bad.mkdir(parents=True)
    expect = {}

    def put(rel: str, data: bytes, outcome: str) -> None:
        (root / rel).write_bytes(data)
        expect[rel] = outcome

    half = Image.new("RGB", (64, 48), RED)
    half.paste(Image.new("RGB", (32, 48), BLUE), (32, 0))
    jpeg = _jpeg_bytes(half)
    put("good/plain.jpg", jpeg, "ok")
    put("good/UPPER CASE.JPEG", jpeg, "ok")
    put("good/ünïcødé 日本.jpg", jpeg, "ok")
    put("good/cmyk.jpg", _jpeg_bytes(half.convert("CMYK")), "ok")
    put("good/gray.jpg", _jpeg_bytes(half.convert("L")), "ok")
    buf = io.BytesIO()
    Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 21).astype(np.uint16)).save(buf, "PNG")
    put("good/sixteen-bit.png", buf.getvalue(), "ok")
    buf = io.BytesIO()
    pal = half.convert("P", palette=Image.ADAPTIVE, colors=4)
    pal.info["transparency"] = 0
    pal.save(buf, "PNG", transparency=0)
    put("good/palette-alpha.png", buf.getvalue(), "ok")
    buf = io.BytesIO()
    rgba = half.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(buf, "PNG")
    put("good/rgba.png", buf.getvalue(), "ok")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    put("good/exif-rotated.jpg", _jpeg_bytes(half, exif=exif), "ok")
    buf = io.BytesIO()
    frames = [Image.new("RGB", (32, 32), RED), Image.new("RGB", (32, 32), BLUE)]
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    put("good/animated.gif", buf.getvalue(), "ok")
    buf = io.BytesIO()
    half.save(buf, "WEBP")
    put("good/photo.webp", buf.getvalue(), "ok")
    buf = io.BytesIO()
    half.save(buf, "BMP")
    put("good/photo.bmp", buf.getvalue(), "ok")

    put("bad/zero-byte.png", b"", "skip")
    put("bad/random-bytes.jpg", np.random.default_rng(0).bytes(2000), "skip")
    put("bad/text-file.png", b"this is not an image\n", "skip")
    put("bad/truncated.jpg", jpeg[: len(jpeg) // 2], "skip")
    put("bad/bomb.png", _png_with_size(30000, 30000), "skip")
    return expect


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


def test_broken_files_are_the_corpus_skips(tmp_path):
    expect = make_corpus(tmp_path)
    assert set(BROKEN) == {p for p, o in expect.items() if o == "skip"}


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


def _config(data: Path, cache: Path, strict: bool = False) -> Config:
    c = Config()
    c.dataset.root = str(data)
    c.dataset.test = 0.3
    c.backbone.weights = "none"
    c.backbone.input_size = 32
    c.extract.batch_size = 4
    c.extract.strict = strict
    c.cache_dir = str(cache)
    return c


def test_extract_records_every_skip_and_keeps_the_rest(tmp_path):
    expect = make_corpus(tmp_path / "data")
    result = extract(_config(tmp_path / "data", tmp_path / "cache"), progress=False)
    skipped = dict(result.skipped)
    assert set(skipped) == set(BROKEN) == {p for p, o in expect.items() if o == "skip"}
    for rel, (kind, message) in BROKEN.items():  # "<error type>: <what the decoder said>"
        assert skipped[rel].startswith(f"{kind.__name__}: "), skipped[rel]
        assert message in skipped[rel], skipped[rel]
    with h5py.File(result.path, "r") as f:
        paths = [p.decode() for p in f["paths"][:]]
        ok = f["ok"][:]
        assert sorted(paths) == sorted(expect)
        for path, flag in zip(paths, ok):
            assert flag == (expect[path] == "ok"), path
        assert np.abs(f["features"][:][~ok]).max() == 0  # no garbage in skipped rows
        assert np.abs(f["features"][:][ok]).sum(axis=1).min() > 0
        assert len(f["skipped"]) == len(skipped)
    with FeatureStore(result.path) as store:
        assert dict(store.skipped) == skipped  # the reasons are recorded in the store


def test_strict_turns_skips_into_an_error_naming_the_file(tmp_path):
    expect = make_corpus(tmp_path / "data")
    with pytest.raises(ExtractError) as err:
        extract(_config(tmp_path / "data", tmp_path / "cache", strict=True), progress=False)
    assert any(p.split("/")[-1] in str(err.value) for p, o in expect.items() if o == "skip")
    assert not list((tmp_path / "cache").glob("*.h5"))  # nothing finished is claimed


def test_cache_folder_that_is_a_file_gives_one_line_error(tmp_path, capsys):
    from featx.cli import main

    make_corpus(tmp_path / "data")
    (tmp_path / "cache").write_text("not a folder")
    code = main(["extract", "--data", str(tmp_path / "data"), "--weights", "none",
                 "--input-size", "32", "--cache-dir", str(tmp_path / "cache" / "sub"),
                 "--no-progress"])
    assert code == 2
    one_error_line(capsys.readouterr().err, tmp_path / "cache" / "sub")


def test_full_disk_gives_one_line_error_and_keeps_blocks(tmp_path, capsys, monkeypatch):
    import errno

    from featx.cli import main
    from featx.store import blocks as store_blocks

    make_corpus(tmp_path / "data")
    real_save = store_blocks.BlockDir.save
    calls = []

    def save_then_fill(self, index, *a):
        if calls:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.block_path(index)))
        calls.append(index)
        return real_save(self, index, *a)

    monkeypatch.setattr(store_blocks.BlockDir, "save", save_then_fill)
    args = ["extract", "--data", str(tmp_path / "data"), "--weights", "none", "--input-size",
            "32", "--batch-size", "1", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert main(args) == 2
    (partial,) = (tmp_path / "cache").glob("*.partial")
    line = one_error_line(capsys.readouterr().err, partial / "block-000001.npz")
    assert "No space left on device" in line
    assert len(list((tmp_path / "cache").glob("*.partial/block-*.npz"))) == 1
    monkeypatch.setattr(store_blocks.BlockDir, "save", real_save)
    assert main(args) == 0
    assert "resuming" in capsys.readouterr().err


def _as_nobody(command: list[str]) -> list[str]:
    """``command`` as an unprivileged user: root (as the suite runs in CI) writes anywhere."""
    if os.geteuid() != 0:
        return command
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]


@pytest.fixture
def open_tmp():
    """A temporary folder that any user may enter (pytest's own are root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="featx-perm-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_cache_folder_without_write_permission_gives_one_line_error(open_tmp):
    data, cache, home = open_tmp / "data", open_tmp / "cache", open_tmp / "home"
    make_corpus(data)
    for folder in (data, *data.rglob("*")):
        folder.chmod(0o755 if folder.is_dir() else 0o644)
    cache.mkdir(mode=0o555)
    cache.chmod(0o555)  # readable, not writable (mkdir's mode is masked by the umask)
    home.mkdir(mode=0o777)
    home.chmod(0o777)
    env = dict(os.environ, HOME=str(home), TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("FEATX_CACHE_DIR", None)
    probe = subprocess.run(_as_nobody(featx_command("--help")), cwd=REPO, env=env,
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"featx does not run as an unprivileged user here: {probe.stderr[-500:]}")
    done = subprocess.run(_as_nobody(featx_command(
        "extract", "--data", data, "--weights", "none", "--input-size", "32",
        "--cache-dir", cache, "--no-progress")), cwd=REPO, env=env, capture_output=True,
        text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr, str(cache))  # the cache folder, named
    assert "Permission denied" in line
    assert done.stdout == "" and list(cache.iterdir()) == []


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
