"""Made with featx 0.4.1 (commit 2405678), on 2026-12-06: two saved models and what they
predicted, for tests/test_compat.py (files saved before the package moved into subpackages).

    git worktree add /tmp/base 2405678
    cd /tmp/base && PYTHONPATH=/tmp/base python make.py OUT DATA
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import featx
from featx.classification import classify
from featx.config import Config
from featx.extraction import extract

out, data = Path(sys.argv[1]), Path(sys.argv[2])
rng = np.random.default_rng(7)
for name, colour in (("cat", (200, 70, 30)), ("dog", (40, 170, 60)), ("fox", (30, 60, 210))):
    for i in range(8):
        path = data / name / f"{name}{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.array(colour) + rng.normal(0, 40, (24, 24, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
c = Config()
c.name = "compat"
c.dataset.root = str(data)
c.dataset.test = 0.25
c.backbone.weights = "none"
c.backbone.input_size = 32
c.extract.batch_size = 8
c.classify.classifiers = ["logreg", "sgd"]
c.classify.quick = True
c.classify.n_jobs = 1
c.cache_dir = str(out / "cache")
extract(c, progress=False)
results = classify(c, echo=lambda *a: None)
images = out / "images"
images.mkdir(parents=True, exist_ok=True)
for path in (data / "cat" / "cat0.png", data / "dog" / "dog3.png", data / "fox" / "fox5.png"):
    shutil.copy(path, images / f"{path.parent.name}-{path.name}")
expected = {}
run = next((out / "cache").glob("*.runs/*/"))
for r in results:
    saved = out / f"featx-0.4.1-{r['classifier']}.skops"
    shutil.copy(run / Path(r["model"]).name, saved)
    files = sorted(str(p) for p in images.iterdir())
    expected[r["classifier"]] = {
        "labels": None, "files": [Path(f).name for f in files],
        "proba": np.asarray(featx.load_model(saved).predict_proba(files)).round(6).tolist()}
(out / "expected.json").write_text(json.dumps({"featx": featx.__version__, **expected}, indent=1))
