"""Trust at the seams a user hands featx (issue 24, items 7, 8, 9, 13 and 14): the dataset
folder named now, pipeline names, run folders and what they name, and what the command line
prints."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import one_error_line

from featx.cli import build_parser, main
from featx.core.config import Config, ConfigError, DatasetConfig
from featx.core.errors import ModelFileError
from featx.core.runinfo import Run
from featx.data.dataset import load_dataset
from featx.learn import modelfile
from featx.learn.classification import classify
from featx.learn.predict import Prediction, Predictor, write_table


class CreatesFile:
    """Unpickled, it creates the file at ``path``: a model file that runs code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _evil_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"model": CreatesFile(marker), "label_names": ["a"],
                                   "pipeline": {}}))
    return path


# --- 7: reports use the dataset folder the user names now ------------------------------------

def test_a_renamed_dataset_folder_is_the_one_the_report_shows(tiny_store, make_config,
                                                                tmp_path):
    renamed = tmp_path / "B2"
    shutil.copytree(tiny_store.root, renamed)  # sizes and mtimes kept: the same store
    out = tmp_path / "out"
    config = make_config(renamed, tiny_store.config.cache_dir, out=str(out),
                         dataset={"name": tiny_store.root.name},
                         classify={"classifiers": ["logreg"]})
    [result] = classify(config)
    assert result["store"] == str(tiny_store.path)  # a cache hit on the old folder's store
    assert result["root"] == str(renamed.resolve())
    page = (out / result["run"] / "tiny-logreg.html").read_text()
    assert tiny_store.root.resolve().as_uri() not in page
    saved = json.loads((out / result["run"] / "tiny-logreg.json").read_text())
    assert saved["root"] == str(renamed.resolve())


def test_a_renamed_dataset_folder_is_the_one_the_audit_reads(tiny_store, make_config,
                                                                tmp_path):
    from featx.inspect.audit import run_audit

    renamed = tmp_path / "B2"
    shutil.copytree(tiny_store.root, renamed)
    config = make_config(renamed, tiny_store.config.cache_dir,
                         dataset={"name": tiny_store.root.name})
    page, _ = run_audit(config, out=tmp_path / "audit")
    text = page.read_text()
    assert str(renamed.resolve()) in text and str(tiny_store.root.resolve()) not in text


def test_the_gallery_reads_no_image_without_a_dataset_folder(tmp_path, monkeypatch,
                                                             image_file):
    from featx.report.results import html_report

    monkeypatch.chdir(tmp_path)
    image_file(tmp_path / "c" / "x.png")  # would be read relative to the working folder
    result = {"pipeline": "p", "classifier": "logreg", "rank1": 0.5, "rank5": None,
              "per_class": {}, "confused_pairs": [], "root": None, "n_misclassified": 1,
              "scores": "probabilities",
              "misclassified": [{"path": "c/x.png", "true": "a", "predicted": "b",
                                 "score": 0.9, "true_score": 0.1}]}
    page = html_report(result, {})
    assert "data:image/jpeg" not in page and "no dataset folder named" in page


# --- 8: a pipeline name never leads out of its folder -----------------------------------------

@pytest.mark.parametrize("name", ["../../../../ESCAPED", "a/b", "..", ".", "", "a\\b",
                                  "red\x1b[31m"])
def test_a_pipeline_name_that_is_no_plain_file_name_is_refused(name, tmp_path, capsys):
    with pytest.raises(ConfigError, match="name"):
        Config().set(f"name={json.dumps(name)}")
    with pytest.raises(ConfigError, match="not a plain file name"):
        Config.from_dict({"name": name})
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(f"name = {json.dumps(name)}\n")
    assert main(["classify", "-p", str(pipeline), "--data", str(tmp_path / "none")]) == 2
    assert "not a plain file name" in one_error_line(capsys.readouterr().err, pipeline)


def test_result_files_stay_in_the_run_folder_whatever_the_name(tiny_store, make_config,
                                                               tmp_path):
    out = tmp_path / "a" / "b" / "c" / "out"
    config = make_config(tiny_store.root, tiny_store.config.cache_dir, out=str(out),
                         classify={"classifiers": ["logreg"]})
    config.name = "../../../../ESCAPED"  # past validation, as a library caller can
    [result] = classify(config)
    run = out / result["run"]
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert written and all(p.parent == run for p in written), written
    assert all(Path(f).parent == run for f in result["files"])
    assert (run / result["model"]).is_file()


def test_a_run_file_is_inside_its_run_folder(tmp_path):
    run = Run.open(tmp_path / "runs", {})
    for name in ["../../x-finetune", "/etc/x", "a/../../b", "..", "ok-logreg"]:
        assert run.file(name).parent == run.dir, name


# --- 9: every fine-tuning keeps its own run folder --------------------------------------------

@pytest.mark.slow
def test_finetuning_again_keeps_the_earlier_results(tiny_store, tmp_path, capsys):
    from featx.report import runs

    cache = tmp_path / "cache"
    args = ["finetune", "--data", str(tiny_store.root), "--weights", "none",
            "--input-size", "32", "--batch-size", "8", "--cache-dir", str(cache),
            "--no-progress", "--set=name=tiny", "--set=finetune.warmup_epochs=1",
            "--set=finetune.epochs=0", "--set=finetune.batch_size=8"]
    assert main(args) == 0
    (parent,) = cache.glob("*-finetune.runs")
    (first,) = [p for p in parent.iterdir() if p.is_dir()]
    kept = {p.name: p.read_bytes() for p in first.iterdir()}
    assert {"tiny-finetune.json", "tiny-finetune.keras", "tiny-finetune.html"} <= set(kept)
    assert main(args) == 0
    folders = sorted(p for p in parent.iterdir() if p.is_dir())
    assert len(folders) == 2 and first in folders
    assert {p.name: p.read_bytes() for p in first.iterdir()} == kept  # untouched
    for folder in folders:
        result = json.loads((folder / "tiny-finetune.json").read_text())
        assert result["run"] == folder.name and result["finetune"]["warmup_epochs"] == 1
        assert all(Path(f).parent == folder and Path(f).is_file() for f in result["files"])
    listed = runs.load_runs(runs.find_results(cache))
    assert sorted(Path(r["path"]).parent for r in listed) == folders
    capsys.readouterr()
    assert main(["runs", "--cache-dir", str(cache), "--latest", "--csv"]) == 0
    (row,) = capsys.readouterr().out.strip().splitlines()[1:]
    assert folders[-1].name in row  # the newest run folder is a run's like any other


# --- 13: a run folder names only files inside it ----------------------------------------------

def _run_folder(tmp_path: Path, model: str) -> Path:
    run = tmp_path / "out" / "20240101-000000-abcdef12"
    run.mkdir(parents=True)
    (run / "tiny-logreg.json").write_text(json.dumps({"classifier": "logreg", "rank1": 1.0,
                                                      "model": model}))
    return run


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_a_model_outside_the_run_folder_is_refused_and_never_loaded(where, tmp_path,
                                                                     capsys):
    marker = tmp_path / "pwned.txt"
    evil = _evil_pickle(tmp_path / "evil.joblib", marker)
    model = {"parent": "../../evil.joblib", "absolute": str(evil),
             "symlink": "tiny-logreg.skops"}[where]
    run = _run_folder(tmp_path, model)
    if where == "symlink":
        (run / "tiny-logreg.skops").symlink_to(evil)
    with pytest.raises(ModelFileError, match=f"resolves to {evil}, outside the run folder"):
        Predictor.load(run, trust=True)
    assert main(["predict", "--trust", str(run), str(tmp_path / "photo.jpg")]) == 2
    line = one_error_line(capsys.readouterr().err, run)
    assert "outside the run folder" in line
    assert not marker.exists()  # never unpickled, --trust or not


# --- 14a: what the command line prints is escaped for a terminal ------------------------------

def test_predict_escapes_control_characters_in_class_names_and_paths():
    import io

    predictor = SimpleNamespace(source="m.skops", classifier="logreg", calibration="x",
                                backbone=SimpleNamespace(spec=SimpleNamespace(name="M")))
    out = io.StringIO()
    write_table([Prediction("a\x1b]0;title\x07.png", [("\x1b[31mred\x1b[0m", 0.9),
                                                       ("b\rlue", 0.1)]),
                 Prediction("c\u202egnp.exe", [], "bad\x1b[2J")], predictor, out)
    text = out.getvalue()
    assert "\x1b" not in text and "\r" not in text and "\u202e" not in text
    assert "\\x1b[31mred\\x1b[0m 0.900" in text and "b\\rlue 0.100" in text
    assert text.count("\n") == 3  # the header and one line per image


def test_an_error_line_escapes_control_characters(tmp_path, capsys):
    model = tmp_path / "no\x1b[2Jmodel"
    assert main(["predict", str(model), str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "no\\x1b[2Jmodel" in one_error_line(err)


# --- 14b: no classifier is no run ------------------------------------------------------------

@pytest.mark.parametrize("value", ["[]", '""'])
def test_an_empty_classifier_list_is_refused(value, tmp_path, capsys):
    with pytest.raises(ConfigError, match="classify.classifiers is empty"):
        Config().set(f"classify.classifiers={value}")
    out = tmp_path / "out"
    assert main(["classify", "--data", str(tmp_path / "none"), "--out", str(out),
                 "--set", f"classify.classifiers={value}"]) == 2
    assert "classify.classifiers is empty" in one_error_line(capsys.readouterr().err)
    assert not out.exists()


# --- 14c: a truncated skops file is damaged, not a pickle to trust ----------------------------

def test_a_truncated_skops_file_is_called_damaged_not_a_pickle(tmp_path):
    from sklearn.linear_model import LogisticRegression

    x, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2
    path = modelfile.save(tmp_path / "m.skops", {"model": LogisticRegression().fit(x, y)})
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    for trust in (False, True):
        with pytest.raises(ModelFileError, match="damaged or truncated skops") as e:
            modelfile.load(path, trust=trust)
        assert "pickle" not in str(e.value) and "--trust" not in str(e.value)


# --- 14d: a byte-order mark is no part of the header ------------------------------------------

def test_a_manifest_with_a_utf8_bom_reads_its_header(tmp_path, image_file):
    for rel in ("a/1.png", "b/2.png"):
        image_file(tmp_path / rel)
    manifest = tmp_path / "list.csv"
    manifest.write_bytes("path,label\na/1.png,ant\nb/2.png,bee\n".encode("utf-8-sig"))
    assert manifest.read_bytes().startswith(b"\xef\xbb\xbf")
    d = load_dataset(DatasetConfig(manifest=str(manifest), test=0.0))  # reading only
    assert list(d.paths) == ["a/1.png", "b/2.png"] and d.label_names == ["ant", "bee"]


# --- 14e: explain's occlusion options take no 0 ----------------------------------------------

@pytest.mark.parametrize("flag", ["--patch", "--stride"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_explain_refuses_a_non_positive_patch_or_stride(flag, value, tmp_path, capsys):
    assert main(["explain", str(tmp_path / "model.skops"), str(tmp_path / "x.png"),
                 flag, value]) == 2
    assert f"{flag} must be at least 1, not {value}" in one_error_line(
        capsys.readouterr().err)


# --- 14f: cache rm says that results and saved models go with the stores ----------------------

def test_cache_rm_all_says_the_results_and_models_go_before_they_do(tmp_path, capsys):
    cache = tmp_path / "cache"
    store = cache / "shapes-MobileNetV2-avg-0123456789abcdef.h5"
    store.parent.mkdir()
    store.write_bytes(b"not read: removed")
    run = cache / "shapes-MobileNetV2-avg-0123456789abcdef.runs" / "20240101-000000-abcdef12"
    run.mkdir(parents=True)
    for name in ("tiny-logreg.json", "tiny-logreg.skops", "tiny-knn.json", "tiny-knn.skops"):
        (run / name).write_text("{}")
    assert main(["cache", "rm", "--all", "--cache-dir", str(cache)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "2 results and 2 saved models" in lines[0] and str(run.parent) in lines[0]
    assert all(line.startswith("removed ") for line in lines[1:])
    assert not run.parent.exists() and not store.exists()
    cache_parser = build_parser()._subparsers._group_actions[0].choices["cache"]
    rm = cache_parser._subparsers._group_actions[0].choices["rm"]
    assert "run folders and saved models" in rm.format_help().replace("\n", " ")


def test_a_log_line_escapes_control_characters(capsys):
    import logging

    logging.getLogger("featx.test").warning("skipped %s\n  next", "cat/\x1b[2Jx.png")
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\x1b[2Jx.png" in err and "\n  next" in err
