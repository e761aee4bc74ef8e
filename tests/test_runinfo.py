"""featx.core.runinfo: a run's own folder, never reused, named by its start time and
settings, and what it records about itself (versions, machine, files)."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

import featx
from featx.core import runinfo
from featx.core.runinfo import Run, machine, settings_hash, versions

SETTINGS = {"classifiers": ["logreg"], "cv": 5, "out": Path("/results")}


def test_a_settings_hash_names_the_settings_in_any_order():
    digits = settings_hash(SETTINGS)
    assert re.fullmatch(r"[0-9a-f]{8}", digits)
    assert settings_hash(dict(reversed(SETTINGS.items()))) == digits
    assert settings_hash({**SETTINGS, "cv": 3}) != digits


@pytest.fixture
def frozen(monkeypatch):
    """Every run starts at 2026-01-02 03:04:05 UTC."""
    class Clock(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)

    monkeypatch.setattr(runinfo, "datetime", Clock)


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path, frozen):
    stem = f"20260102-030405-{settings_hash(SETTINGS)}"
    runs = [Run.open(tmp_path / "runs", SETTINGS) for _ in range(3)]
    assert [r.dir.name for r in runs] == [stem, f"{stem}-2", f"{stem}-3"]
    assert all(r.dir.is_dir() for r in runs)
    other = Run.open(tmp_path / "runs", {**SETTINGS, "cv": 2})
    assert other.dir.name == f"20260102-030405-{settings_hash({**SETTINGS, 'cv': 2})}"


def test_a_thousandth_run_in_one_second_is_an_error(tmp_path, frozen):
    stem = f"20260102-030405-{settings_hash({})}"
    (tmp_path / stem).mkdir()
    for n in range(2, 1000):
        (tmp_path / f"{stem}-{n}").mkdir()
    with pytest.raises(FileExistsError, match=f"too many runs named {stem}"):
        Run.open(tmp_path, {})


def test_a_run_records_itself_beside_the_result(tmp_path, frozen):
    run = Run.open(tmp_path, SETTINGS, section="finetune")
    assert run.file("my pipeline/../x-logreg.json") == run.dir / "my_pipeline_.._x-logreg.json"
    record = run.record({"rank1": 0.9}, [run.dir / "a.json"])
    assert record["rank1"] == 0.9 and record["run"] == run.dir.name
    assert record["started"] == "2026-01-02T03:04:05+00:00"
    assert record["duration_seconds"] >= 0
    assert record["finetune"] == SETTINGS and "classify" not in record
    assert record["files"] == [str(run.dir / "a.json")]
    assert record["versions"] == run.libraries and record["machine"] == run.host


def test_versions_are_the_installed_ones():
    found = versions()
    assert set(found) == {"featx", "scikit-learn", "numpy", "skops", "tensorflow", "h5py",
                          "python"}
    assert found["featx"] == featx.__version__ and found["numpy"] == np.__version__
    assert found["python"] == ".".join(map(str, sys.version_info[:3]))


def test_the_machine_without_a_gpu_driver_has_no_gpus(monkeypatch):
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)  # ask the driver
    monkeypatch.setattr(runinfo.shutil, "which", lambda name: None)
    host = machine()
    assert set(host) == {"system", "cpu", "cpus", "gpus"}
    assert host["gpus"] == [] and host["cpus"] >= 1 and host["cpu"]


def test_the_gpus_are_the_drivers_names(monkeypatch):
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    monkeypatch.setattr(runinfo.shutil, "which", lambda name: "/usr/bin/" + name)
    answers = [subprocess.CompletedProcess([], 0, "NVIDIA H100 80GB HBM3\n\nNVIDIA L4\n", "")]

    def nvidia_smi(*args, **kwargs):
        if not answers:
            raise subprocess.TimeoutExpired("nvidia-smi", 10)
        return answers.pop()

    monkeypatch.setattr(runinfo.subprocess, "run", nvidia_smi)
    assert machine()["gpus"] == ["NVIDIA H100 80GB HBM3", "NVIDIA L4"]
    assert machine()["gpus"] == []  # a driver that does not answer: none
