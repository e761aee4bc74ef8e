"""featx.core.progress: the one progress bar (tqdm.auto) of extraction, the Ray engine and
fine-tuning; the Python API shows it by default and hides it with ``progress=False``."""

from __future__ import annotations

import ast
import pickle
import re

import numpy as np
import tqdm.auto
from helpers import REPO

import featx
from featx.core import progress

BAR = re.compile(r"MobileNetV2 shapes: 100%\|.*\| (\d+)/\1 ")


def test_one_bar_from_tqdm_auto_shown_unless_asked_not_to(capsys):
    assert progress.tqdm is tqdm.auto.tqdm  # a widget in a notebook, a text bar elsewhere
    with progress.bar(3, "work", "img", initial=1) as bar:
        bar.update(2)
    err = capsys.readouterr().err
    assert "work: 100%" in err and "3/3" in err  # on stderr, though it is no terminal here
    with progress.bar(3, "work", "img", progress=False) as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""


def test_only_featx_progress_sets_up_tqdm():
    # extraction, the Ray engine and fine-tuning share one bar and its one default
    users = set()
    for path in (REPO / "featx").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n.split(".")[0] == "tqdm" for n in names):
                users.add(path.relative_to(REPO / "featx").as_posix())
    assert users == {"core/progress.py"}


def test_extract_shows_a_bar_by_default_and_none_with_progress_false(tiny_root, make_config,
                                                                      tmp_path, capsys):
    root, _ = tiny_root
    featx.extract(make_config(root, tmp_path / "a"))
    shown = capsys.readouterr()
    assert BAR.search(shown.err), shown.err
    assert shown.out == ""
    featx.extract(make_config(root, tmp_path / "b"), progress=False)  # not a cache hit
    quiet = capsys.readouterr()
    assert quiet.out == "" and "MobileNetV2 shapes" not in quiet.err, quiet.err


def test_feature_extractor_shows_a_bar_over_files_unless_asked_not_to(tiny_store, capsys):
    from featx.features.transformer import FeatureExtractor

    paths = [str(tiny_store.root / p) for files in tiny_store.written.values() for p in files][:5]
    settings = {"weights": "none", "input_size": 32, "batch_size": 4}
    shown = FeatureExtractor(**settings).transform(paths)
    assert re.search(r"MobileNetV2: 100%\|.*\| 5/5 ", capsys.readouterr().err)
    quiet = FeatureExtractor(**settings, progress=False).transform(paths)
    assert "MobileNetV2" not in capsys.readouterr().err
    np.testing.assert_array_equal(shown, quiet)


def test_feature_extractor_pickled_before_progress_existed_shows_it():
    from featx.features.transformer import FeatureExtractor

    old = FeatureExtractor(weights="none")
    del old.progress  # as featx 0.4 pickled it
    assert pickle.loads(pickle.dumps(old)).get_params()["progress"] is True
