"""Every ``featx classify`` run kept in a folder of its own, recording what it ran with;
result files written atomically (issue 12)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from datetime import datetime, timedelta, timezone
from importlib import metadata
from pathlib import Path

import pytest
import sklearn

import featx
from featx.cli import main
from featx.core import files
from featx.learn.classification import classify
from featx.learn.predict import ModelFileError, Predictor
from featx.report import results as report

RUN_NAME = re.compile(r"\d{8}-\d{6}-[0-9a-f]{8}(-\d+)?")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_runs_never_overwrite_each_other(tiny_store, make_config, tmp_path, capsys):
    out = tmp_path / "out"
    config = make_config(tiny_store.root, tiny_store.config.cache_dir, out=str(out),
                         classify={"classifiers": ["logreg"]})
    [first] = classify(config)
    kept = _files(out / first["run"])
    [again] = classify(config)  # the very same settings
    config.classify.quick = True
    [quick] = classify(config)
    runs = [first["run"], again["run"], quick["run"]]
    assert len(set(runs)) == 3 and all(RUN_NAME.fullmatch(r) for r in runs)
    assert sorted(p.name for p in out.iterdir()) == sorted(runs)
    hashes = [r.split("-")[2] for r in runs]  # <date>-<time>-<settings hash>[-<n>]
    assert hashes[0] == hashes[1] != hashes[2]  # a second run in one second gets "-2"
    assert _files(out / first["run"]) == kept  # untouched by the later runs
    capsys.readouterr()
    assert main(["runs", "--cache-dir", str(tmp_path / "none"), str(out)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1 + 3
    assert main(["runs", "--cache-dir", str(tmp_path / "none"), str(out), "--latest",
                 "--csv"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()[1:]
    assert quick["run"] in line


def test_the_result_records_its_run(tiny_store, make_config, tmp_path):
    out = tmp_path / "out"
    config = make_config(tiny_store.root, tiny_store.config.cache_dir, out=str(out),
                         classify={"classifiers": ["logreg", "knn"], "class_weight": "balanced"})
    before = datetime.now(timezone.utc)
    results = classify(config)
    elapsed = (datetime.now(timezone.utc) - before).total_seconds()
    run = out / results[0]["run"]
    written = set()
    for r in results:
        saved = json.loads((run / f"tiny-{r['classifier']}.json").read_text())
        assert saved == json.loads(json.dumps(r))
        started = datetime.fromisoformat(saved["started"])
        assert before - timedelta(seconds=1) <= started <= before + timedelta(seconds=elapsed)
        assert 0 < saved["duration_seconds"] <= elapsed
        assert saved["classify"] == dataclasses.asdict(config.classify)
        assert saved["classify"]["class_weight"] == "balanced"
        assert saved["key"] == tiny_store.key  # the store's content key
        v = saved["versions"]
        assert v["featx"] == featx.__version__ and v["scikit-learn"] == sklearn.__version__
        tf = next(d for d in ("tensorflow", "tensorflow-cpu")
                  if _installed(d))
        assert v["tensorflow"] == metadata.version(tf)
        m = saved["machine"]
        assert m["cpus"] == os.cpu_count() and m["cpu"] and isinstance(m["gpus"], list)
        files = [Path(f) for f in saved["files"]]
        assert all(f.parent == run and f.is_file() for f in files)
        assert saved["model"] == f"tiny-{r['classifier']}.skops"
        written |= {f.name for f in files}
    assert written == {p.name for p in run.iterdir()}  # everything written, listed


def _installed(distribution: str) -> bool:
    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def test_a_run_killed_while_writing_leaves_no_result(tiny_store, make_config, tmp_path,
                                                     monkeypatch, capsys):
    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as when the user presses Ctrl-C mid-report

    monkeypatch.setattr(report, "html_report", killed)
    out = tmp_path / "out"
    config = make_config(tiny_store.root, tiny_store.config.cache_dir, out=str(out),
                         classify={"classifiers": ["logreg"]})
    with pytest.raises(KeyboardInterrupt):
        classify(config)
    (run,) = out.iterdir()
    names = sorted(p.name for p in run.iterdir())
    assert names == ["tiny-logreg-confusion.png", "tiny-logreg-recall.png", "tiny-logreg.md",
                     "tiny-logreg.skops"]  # whole files only; no JSON, no temporary file
    capsys.readouterr()
    assert main(["runs", "--cache-dir", str(tmp_path / "none"), str(out)]) == 0
    assert "0 runs" in capsys.readouterr().err


def test_an_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = files.write_atomic(tmp_path / "result.json", '{"rank1": 0.9}')

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        files.write_atomic(target, '{"rank1": 0.1, "half": ')
    assert target.read_text() == '{"rank1": 0.9}'
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_predict_takes_a_run_folder(tiny_store, make_config, tmp_path, capsys, featx_info):
    out = tmp_path / "out"
    config = make_config(tiny_store.root, tiny_store.config.cache_dir, out=str(out),
                         classify={"classifiers": ["logreg", "knn"]})
    results = classify(config)
    run = out / results[0]["run"]
    best = min(results, key=lambda r: (-r["rank1"], r["model"]))  # equals: by name
    capsys.readouterr()
    predictor = Predictor.load(run)
    assert predictor.source == str(run / best["model"])
    assert f"using {best['model']}" in capsys.readouterr().err
    with pytest.raises(ModelFileError, match="no saved model"):
        Predictor.load(tmp_path)  # a folder, but no run
