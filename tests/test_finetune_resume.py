"""SIGKILL a fine-tuning in its warm-up and in phase 2, each run resuming the one killed before
it; the last run ends as an uninterrupted one does: the same kept epochs, history and test
scores (refit phases included)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, featx_here
from test_finetune import calibrate_batchnorm

from featx.data.dataset import TRAIN
from featx.learn import finetune
from featx.learn.finetune import PHASES, load_image_splits
from featx.store import cache

pytestmark = pytest.mark.slow

# Enough epochs that a kill falls inside each phase; refit adds two phases to resume in.
SETTINGS = {"warmup_epochs": 4, "warmup_lr": 1e-2, "epochs": 4, "unfreeze": 4, "lr": 3e-4,
            "batch_size": 4, "patience": 10, "augment": True, "crops": 1, "refit": True,
            "schedule": "cosine", "holdout": 0.25, "seed": 0}
# (phase index, epochs finished in it) after whose checkpoint the process kills itself: in
# the warm-up and in phase 2 (the refit phases resume by the same code, and run after it)
KILLS = [(0, 2), (1, 2)]

# The featx command line in a fresh process, with a BatchNorm calibration (random weights
# learn nothing without it, see test_finetune.py) and a SIGKILL right after the checkpoint of
# one epoch is on disk. The runs nobody kills run in the test's process (_run_here).
RUNNER = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import numpy as np
from featx.learn import finetune
from featx.cli import main
from test_finetune import calibrate_batchnorm

kill = {kill!r}
images = np.load({calibration!r})
build, save = finetune.FineTuner._build, finetune.Checkpoint.save

def build_calibrated(self):
    build(self)
    calibrate_batchnorm(self, images)

def save_then_die(self, state, arrays):
    save(self, state, arrays)
    if kill and (state["phase"], state["epoch"]) == tuple(kill):
        os.kill(os.getpid(), signal.SIGKILL)

finetune.FineTuner._build, finetune.Checkpoint.save = build_calibrated, save_then_die
sys.exit(main(sys.argv[1:]))
"""


def _args(root: Path, cache_dir: Path, out: Path) -> list[str]:
    return ["finetune", "--data", str(root), "--weights", "none", "--input-size", "32",
            "--cache-dir", str(cache_dir), "--out", str(out), "--no-progress", "--set=name=tiny",
            *[f"--set=finetune.{k}={json.dumps(v)}" for k, v in SETTINGS.items()]]


def _run(root: Path, cache_dir: Path, out: Path, calibration: Path,
         kill: tuple[int, int]) -> subprocess.CompletedProcess:
    """The run killed at ``kill``: a fresh process (that kills itself)."""
    script = RUNNER.format(tests=str(REPO / "tests"), kill=kill, calibration=str(calibration))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-c", script, *_args(root, cache_dir, out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _run_here(root: Path, cache_dir: Path, out: Path,
              calibration: Path) -> subprocess.CompletedProcess:
    """A run that nobody kills, in this process: RUNNER's calibration, without the kill."""
    images = np.load(calibration)
    build = finetune.FineTuner._build

    def build_calibrated(self):
        build(self)
        calibrate_batchnorm(self, images)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(finetune.FineTuner, "_build", build_calibrated)
        return featx_here(*_args(root, cache_dir, out))


def _same(result: dict) -> dict:
    """What must not depend on the kills: everything learned and measured, not the clock."""
    history = [{k: v for k, v in row.items() if k != "seconds"} for row in result["history"]]
    return {"history": history, "kept": result["kept_epochs"], "rank1": result["rank1"],
            "rank5": result["rank5"], "confusion": result["confusion"],
            "cv_score": result["cv_score"],
            "misclassified": [(r["path"], r["predicted"], round(r["score"], 6))
                              for r in result["misclassified"]]}


def test_a_killed_finetuning_resumes_and_ends_as_an_uninterrupted_one(tiny_root, make_config,
                                                                      tmp_path):
    root = tiny_root[0]
    calibration = tmp_path / "calibration.npy"
    config = make_config(root, tmp_path / "unused", finetune=SETTINGS)
    np.save(calibration, load_image_splits(config).images[TRAIN])

    done = _run_here(root, tmp_path / "cache-a", tmp_path / "a", calibration)
    assert done.returncode == 0, done.stderr
    (done_file,) = (tmp_path / "a").glob("*/tiny-finetune.json")  # in its run folder
    reference = json.loads(done_file.read_text())
    assert [p for p in PHASES if reference["kept_epochs"].get(p)] == list(PHASES), \
        "every phase must keep a trained epoch, or a resumed phase would prove nothing"

    killed_cache = tmp_path / "cache-b"
    for phase, epoch in KILLS:
        killed = _run(root, killed_cache, tmp_path / "b", calibration, kill=(phase, epoch))
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        (entry,) = [e for e in cache.entries(killed_cache) if e.kind == "checkpoint"]
        assert entry.state == "checkpoint" and entry.key == reference["key"]
        # the epochs it holds: every one of the phases before, and `epoch` of this one
        before = sum(1 for row in reference["history"] if PHASES.index(row["phase"]) < phase)
        assert entry.rows == before + epoch
        monitors = list((tmp_path / "b").glob("*/tiny-finetune-monitor.png"))
        assert monitors and all(m.stat().st_size > 0 for m in monitors)
        assert not list((tmp_path / "b").glob("*/tiny-finetune.json"))

    resumed = _run_here(root, killed_cache, tmp_path / "b", calibration)
    assert resumed.returncode == 0, resumed.stderr
    (result_file,) = (tmp_path / "b").glob("*/tiny-finetune.json")
    result = json.loads(result_file.read_text())
    assert result["resumed_from"] == {"phase": PHASES[KILLS[-1][0]], "epoch": KILLS[-1][1],
                                      "done": False}
    assert _same(result) == _same(reference)
    # the results are written: the checkpoint is gone
    assert not [e for e in cache.entries(killed_cache) if e.kind == "checkpoint"]
