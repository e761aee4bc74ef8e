"""The ``featx`` command, called in-process through ``featx.cli.main``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from helpers import REPO, one_error_line, tiny_args
from PIL import Image

import featx
from featx.cli import build_parser, main
from featx.core.config import tomllib  # tomli on Python 3.10
from featx.features.backbones import REGISTRY
from featx.store.read import FeatureStore


def test_extract_then_classify(tiny_store, tmp_path, capsys):
    root, cache, out = tiny_store.root, tmp_path / "cache", tmp_path / "results"
    assert main(["extract", *tiny_args(root, cache)]) == 0
    printed = capsys.readouterr().out
    assert f"extracted {tiny_store.rows} images" in printed and "0 skipped" in printed
    stores = list(cache.glob("*.h5"))
    assert len(stores) == 1 and str(stores[0]) in printed
    with FeatureStore(stores[0]) as store:
        assert len(store) == tiny_store.rows and store.attrs["input_size"] == 32
        assert store.attrs["key"] == tiny_store.key  # same job as the library call

    assert main(["classify", *tiny_args(root, cache), "--classifiers", "logreg",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr()
    lines = [line for line in printed.out.splitlines() if line.strip()]
    assert len(lines) == 1
    # the line .ci/run and users parse, as 0.4 printed it (the library logs it, main prints it)
    assert re.fullmatch(r"logreg {7}rank-1 \d\.\d{3}  rank-5 (n/a|\d\.\d{3})  \(C=[\d.e-]+; "
                        r"cv \d\.\d{3}; fit \d+\.\ds; \d+ train / \d+ test\)", lines[0]), lines[0]
    assert "rank-1" not in printed.err
    (run,) = out.iterdir()  # the run's own folder
    assert sorted(p.suffix for p in run.iterdir()) == [".html", ".json", ".md", ".png", ".png",
                                                       ".skops"]
    saved = json.loads(next(run.glob("*.json")).read_text())
    assert f"rank-1 {saved['rank1']:.3f}" in lines[0]

    assert main(["extract", *tiny_args(root, cache)]) == 0
    assert "cache hit" in capsys.readouterr().out


# `featx ARGS` in a fresh process, then which of the heavy frameworks it imported (and h5py,
# which every run that reads a store imports: the probe's proof that it sees imports).
IMPORTS_PROBE = """
import sys
from featx.cli import main
code = main(sys.argv[1:])
print("imported:", sorted({m.split(".")[0] for m in sys.modules}
                          & {"tensorflow", "keras", "h5py"}))
sys.exit(code)
"""


def _imports(args: list[str]) -> tuple[str, str]:
    done = subprocess.run([sys.executable, "-c", IMPORTS_PROBE, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, done.stdout.splitlines()[-1]


def test_a_cache_hit_imports_no_tensorflow(cache_copy, tiny_store):
    """README: a cache hit does no model work; here not even TensorFlow's import. The store
    is a copy of the session's (no extraction in a fresh process: it would cost one more
    TensorFlow start-up)."""
    cache, path = cache_copy
    out, imported = _imports(["extract", *tiny_args(tiny_store.root, cache)])
    assert "cache hit" in out and str(path) in out
    assert imported == "imported: ['h5py']"


def test_classify_with_an_explicit_store(tiny_store, tmp_path, capsys):
    out = tmp_path / "results"
    code = main(["classify", "--store", str(tiny_store.path), "--data", str(tiny_store.root),
                 "--classifiers", "linear_svm", "--out", str(out), "--set", "name=given"])
    assert code == 0
    assert "linear_svm" in capsys.readouterr().out
    assert len(list(out.glob("*/given-linear_svm.json"))) == 1


def test_backbones_lists_every_name(capsys):
    assert main(["backbones"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # keras.applications first; then KerasHub's presets, under a heading (tests/test_hub.py)
    hub = next(i for i, line in enumerate(lines) if line.startswith("KerasHub"))
    listed = [line.split()[0] for line in lines[:hub] if line.strip()]
    assert sorted(listed) == sorted(REGISTRY)
    assert all(line.startswith(("hub:", "?:")) for line in lines[hub + 1:] if line.strip())
    for name in ("VGG16", "EfficientNetV2S", "ConvNeXtTiny"):
        line = next(line for line in lines if line.split()[0] == name)
        assert str(REGISTRY[name].input_size) in line and REGISTRY[name].preprocess in line


def test_layers_lists_the_layers(capsys):
    assert main(["layers", "MobileNetV2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines]
    assert len(lines) > 100 and "block_3_expand_relu" in names and "out_relu" in names


def _subcommands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sorted(sub.choices)


@pytest.mark.parametrize("argv", [["--help"]] + [[c, "--help"] for c in _subcommands()]
                         + [["cache", c, "--help"] for c in ("ls", "info", "verify", "rm")],
                         ids=" ".join)
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: featx") and " ".join(argv[:-1]) in out.splitlines()[0]


def test_expected_subcommands_exist():
    assert {"extract", "classify", "backbones", "layers", "demo-data"} <= set(_subcommands())


def test_missing_data_folder_is_a_one_line_error(tmp_path, capsys):
    missing = tmp_path / "no-such-folder"
    assert main(["extract", *tiny_args(missing, tmp_path / "cache")]) == 2
    captured = capsys.readouterr()
    one_error_line(captured.err, missing)
    assert captured.out == ""


@pytest.mark.parametrize("command", ["extract", "classify"])
def test_missing_pipeline_file_is_a_one_line_error(tmp_path, capsys, command):
    missing = tmp_path / "nope.toml"
    assert main([command, "-p", str(missing)]) == 2
    one_error_line(capsys.readouterr().err, missing)


def test_unknown_backbone_is_a_one_line_error(tiny_store, tmp_path, capsys):
    args = tiny_args(tiny_store.root, tmp_path)
    args[args.index("MobileNetV2")] = "NotANet"
    assert main(["extract", *args]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "NotANet" in line and "MobileNetV2" in line


def test_unknown_override_is_a_one_line_error(tiny_store, tmp_path, capsys):
    args = [*tiny_args(tiny_store.root, tmp_path), "--set", "backbone.pool=avg"]
    assert main(["extract", *args]) == 2
    assert "backbone.pool" in one_error_line(capsys.readouterr().err)


def test_classify_before_extract_is_a_one_line_error(tiny_store, tmp_path, capsys):
    assert main(["classify", *tiny_args(tiny_store.root, tmp_path / "empty")]) == 2
    assert "featx extract" in one_error_line(capsys.readouterr().err)


def test_demo_data_exports_the_digits(tmp_path, capsys):
    from sklearn.datasets import load_digits

    folder = tmp_path / "digits"
    assert main(["demo-data", str(folder)]) == 0
    assert str(folder) in capsys.readouterr().out
    digits = load_digits()
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    assert classes == [str(d) for d in range(10)]
    pngs = list(folder.glob("*/*.png"))
    assert len(pngs) == len(digits.images) == 1797
    for d in classes:
        assert len(list((folder / d).glob("*.png"))) == int((digits.target == int(d)).sum())
    with Image.open(pngs[0]) as img:
        assert img.size == (8, 8)
    # a second call keeps what is there
    stamp = pngs[0].stat().st_mtime_ns
    assert main(["demo-data", str(folder)]) == 0
    assert pngs[0].stat().st_mtime_ns == stamp


# ---------------------------------------------------------------------------------- cache

@pytest.fixture
def cache_copy(tiny_store, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy2(tiny_store.path, cache / tiny_store.path.name)
    return cache, cache / tiny_store.path.name


def test_cache_ls_and_info(cache_copy, tiny_store, capsys):
    cache, path = cache_copy
    assert main(["cache", "ls", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert tiny_store.key[:16] in out and "complete" in out and str(tiny_store.rows) in out
    assert main(["cache", "info", tiny_store.key[:6], "--cache-dir", str(cache)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["path"] == str(path) and info["rows"] == tiny_store.rows
    assert info["backbone"] == "MobileNetV2" and info["key"] == tiny_store.key


def test_cache_verify_finds_a_damaged_store(cache_copy, capsys):
    cache, path = cache_copy
    assert main(["cache", "verify", "--cache-dir", str(cache)]) == 0
    assert "OK" in capsys.readouterr().out
    with h5py.File(path, "r") as f:
        chunk = f["features"].id.get_chunk_info(0)
    with path.open("r+b") as f:  # flip some bits inside the first chunk of features
        f.seek(chunk.byte_offset + chunk.size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert main(["cache", "verify", "--cache-dir", str(cache)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_cache_rm(cache_copy, tiny_store, capsys):
    cache, path = cache_copy
    (cache / (path.stem + ".runs")).mkdir()
    assert main(["cache", "rm", tiny_store.key, "--cache-dir", str(cache)]) == 0
    assert str(path) in capsys.readouterr().out
    assert not path.exists() and not (cache / (path.stem + ".runs")).exists()
    assert main(["cache", "rm", tiny_store.key[:8], "--cache-dir", str(cache)]) == 2
    assert tiny_store.key[:8] in one_error_line(capsys.readouterr().err)


def test_cache_on_an_empty_folder(tmp_path, capsys):
    assert main(["cache", "ls", "--cache-dir", str(tmp_path)]) == 0
    assert "0 entries" in capsys.readouterr().out
    assert main(["cache", "verify", "--cache-dir", str(tmp_path)]) == 0


def test_version_is_printed_and_is_the_changelogs_latest_release(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"featx {featx.__version__}"
    repo = Path(__file__).resolve().parents[1]
    releases = re.findall(r"^## (\S+)", (repo / "CHANGELOG.md").read_text(), re.M)
    assert releases and releases[0] == featx.__version__
    project = tomllib.loads((repo / "pyproject.toml").read_text())
    assert "version" in project["project"]["dynamic"]  # read from featx.__version__
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "featx.__version__"}


def test_ray_engine_refuses_variant_stores(cache_copy, tiny_store, capsys, monkeypatch):
    """README: only plain stores are extracted on Ray. The plain store is a cache hit (no
    cluster needed); the 10-crop store is refused, not made: no cluster is ever contacted."""
    from featx.features import distributed

    def no_cluster(*args, **kwargs):
        raise AssertionError("a Ray cluster was contacted")

    monkeypatch.setattr(distributed, "connected", no_cluster)
    cache, path = cache_copy
    args = ["extract", *tiny_args(tiny_store.root, cache), "--engine", "ray",
            "--address", "127.0.0.1:1", "--set", "extract.tencrop=mean"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert "cache hit" in captured.out
    line = one_error_line(captured.err)
    assert "ray engine" in line and "'tencrop'" in line and 'extract.engine = "local"' in line
    assert list(cache.glob("*.h5")) == [path]
    assert not [p.name for p in cache.iterdir() if "tencrop" in p.name]


def test_an_extraction_too_short_to_time_says_so(tmp_path, image_folder, capsys):
    """One batch has no steady-state rate: "0.0 img/s" would be a false figure."""
    image_folder(tmp_path / "data", per_class=2, junk=False)
    # half of each class held out: a class of 2 images gets a test image
    assert main(["extract", *tiny_args(tmp_path / "data", tmp_path / "cache", "--set",
                                       "dataset.test=0.5")]) == 0
    out = capsys.readouterr().out
    assert "too few images to time on" in out and "0.0 img/s" not in out
