"""Distributed extraction and search on a real Ray cluster (featx/features/distributed.py).

One cluster on this machine: a head (`ray start --head`) and one worker node
(`ray start --address`), each in its own process group with its own temp dir, 1 CPU each;
always stopped, by process group, when the test session (or xdist worker) ends. Skipped when
Ray is not installed (a failure under FEATX_REQUIRE_SHARED=1, see realdata.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import assert_close, featx_command
from realdata import (
    FLOWERS17,
    PIPELINE,
    REPO,
    WEIGHTS,
    import_or_unavailable,
    needs_shared,
    seeded_keras_home,
    store_of,
    unavailable,
)

import_or_unavailable("ray")

from featx.cli import main  # noqa: E402
from featx.core.config import Config  # noqa: E402
from featx.core.errors import StoreError  # noqa: E402
from featx.features.distributed import shard_dir  # noqa: E402
from featx.features.extraction import extract  # noqa: E402
from featx.store import cache  # noqa: E402
from featx.store.read import FeatureStore  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one Ray cluster at a time

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# argv: address, nodes, timeout. Connects (retrying while the head starts), then polls.
WAIT_NODES = """
import sys, time
import ray
address, n, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while True:
    try:
        ray.init(address=address, logging_level="ERROR")
        break
    except Exception:  # the head is not up yet
        ray.shutdown()
        if time.monotonic() > deadline:
            raise
        time.sleep(0.5)
while sum(node["Alive"] for node in ray.nodes()) < n:
    if time.monotonic() > deadline:
        sys.exit(f"{sum(node['Alive'] for node in ray.nodes())} of {n} nodes alive")
    time.sleep(0.2)
print(" ".join(node["NodeID"] for node in ray.nodes() if node["Alive"]))
"""


class Cluster:
    """`ray start` processes, each the leader of its own process group (killed as a group:
    the raylet, its helpers and the actors it spawned)."""

    def __init__(self) -> None:
        # Ray's unix sockets live under the temp dir: keep its path short.
        self.tmp = Path(tempfile.mkdtemp(prefix="fxray-"))
        # No token: Ray reads the auth mode once per process, and the drivers run in this one
        # (a ~/.ray/auth_token would otherwise switch the head, and only it, to tokens).
        self.auth = {"RAY_AUTH_MODE": "disabled"}
        # Keras finds the ImageNet weights (../shared) in a seeded KERAS_HOME on every node.
        keras_home = self.tmp / "keras"
        if WEIGHTS.is_file():
            seeded_keras_home(keras_home)
        self.env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", RAY_USAGE_STATS_ENABLED="0",
                        KERAS_HOME=str(keras_home), **self.auth)
        self.env.pop("RAY_ADDRESS", None)
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        try:
            self.head = self._start("head", ["--head", f"--port={self.port}",
                                             f"--ray-client-server-port={_free_port()}",
                                             "--include-dashboard=false",
                                             "--object-store-memory=500000000"])
            self.worker = self.add_worker()
        except BaseException:
            self.stop()
            raise

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = (self.tmp / f"{name}.log").open("w")
        proc = subprocess.Popen(
            [RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1",
             f"--temp-dir={self.tmp / name}", "--disable-usage-stats",
             f"--dashboard-agent-listen-port={_free_port()}", *args],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.procs.append(proc)
        return proc

    def add_worker(self) -> subprocess.Popen:
        nodes = len([p for p in self.procs if p.poll() is None])
        before = self._wait_nodes(nodes)
        proc = self._start(f"worker{len(self.procs)}", [f"--address={self.address}",
                                                        "--object-store-memory=300000000"])
        (self.worker_node_id,) = self._wait_nodes(nodes + 1) - before
        return proc

    def _wait_nodes(self, n: int, timeout: float = 120) -> set[str]:
        """One Python process (not one a second) that polls until ``n`` nodes are alive;
        returns their node ids."""
        try:
            done = subprocess.run([sys.executable, "-c", WAIT_NODES, self.address, str(n),
                                   str(timeout)], env=self.env, capture_output=True, text=True,
                                  timeout=timeout + 60)
        except subprocess.TimeoutExpired:
            done = None
        if done is None or done.returncode != 0:
            detail = "" if done is None else done.stderr[-2000:]
            raise RuntimeError(f"the Ray cluster did not reach {n} nodes:\n{detail}\n"
                               f"{self.logs()}")
        return set(done.stdout.splitlines()[-1].split())

    def rescheduled_actor_nodes(self) -> set[str]:
        """The nodes on which the head saw an actor die and rescheduled it (its GCS log)."""
        found = set()
        for log in (self.tmp / "head").glob("session_*/logs/gcs_server.out"):
            found |= set(re.findall(r"Actor is failed on worker \w+ at node (\w+), "
                                    r"need_reschedule = 1", log.read_text()))
        return found

    def logs(self) -> str:
        return "\n".join(p.read_text()[-2000:] for p in sorted(self.tmp.glob("*.log")))

    def kill(self, proc: subprocess.Popen, sig: int = signal.SIGKILL) -> set[int]:
        """Signal every process of one node; return their ids."""
        family = _family(proc.pid)
        for pid in family:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return family

    def gone(self, pids: set[int], timeout: float) -> bool:
        """Wait until none of ``pids`` runs (ours reaped here, the others by init)."""
        deadline = time.monotonic() + timeout
        while True:
            for proc in self.procs:
                proc.poll()
            if not _running(pids) or time.monotonic() > deadline:
                return not _running(pids)
            time.sleep(0.2)

    def stop(self) -> None:
        pids: set[int] = set()
        for proc in reversed(self.procs):  # workers first, the head last
            pids |= self.kill(proc, signal.SIGTERM)
        if not self.gone(pids, 5):
            for proc in self.procs:  # what SIGTERM left
                pids |= self.kill(proc)
            self.gone(pids, 10)
        self.left = _running(pids)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _family(leader: int) -> set[int]:
    """A node's processes: the process group ``ray start`` leads and everything they spawned
    (Ray's worker processes, the actors, put themselves into groups of their own)."""
    parent, group = {}, {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                state, ppid, pgrp = (d / "stat").read_text().rsplit(")", 1)[1].split()[:3]
            except (OSError, ValueError):
                continue
            if state != "Z":
                parent[int(d.name)], group[int(d.name)] = int(ppid), int(pgrp)
    family = {pid for pid, g in group.items() if g == leader}
    while True:
        more = {pid for pid, pp in parent.items() if pp in family} - family
        if not more:
            return family
        family |= more


def _actors(node: subprocess.Popen) -> list[int]:
    """The featx extraction actors among a node's processes (Ray names them in the command
    line, e.g. ``ray::MapWorker(MapBatches(ShardExtractor))``)."""
    found = []
    for pid in _family(node.pid):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if command.startswith("ray::") and "ShardExtractor" in command:
            found.append(pid)
    return found


def _running(pids: set[int]) -> set[int]:
    running = set()
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                running.add(pid)
        except (OSError, IndexError):
            pass
    return running


# Session-wide, not module-wide: in `make test` (xdist, --dist loadgroup) a worker tore a
# module-wide cluster down between two of these tests and started a second one (twice the Ray
# start-up; seen in `make test-tf-count`'s log: actors under two temp dirs). It is stopped when
# the worker ends.
@pytest.fixture(scope="session")
def cluster():
    c = Cluster()
    saved = {k: os.environ.get(k) for k in c.auth}
    os.environ.update(c.auth)  # for the drivers run in this process
    try:
        yield c
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        c.stop()
        assert not c.left, f"Ray processes left behind: {sorted(c.left)}"


def ray_config(config: Config, cache_dir: Path, address: str, **extract) -> Config:
    config = dataclasses.replace(config, extract=dataclasses.replace(config.extract, **extract),
                                 classify=dataclasses.replace(config.classify))
    config.extract.engine = "ray"
    config.ray_address = address
    config.cache_dir = str(cache_dir)
    return config


def assert_same_store(local: Path, distributed: Path, atol: float = 1e-5) -> float:
    """Row for row the same (paths, labels, split, ok, signatures), features within ``atol``
    relative to their scale, the same datasets and attributes; returns the largest feature
    difference."""
    with FeatureStore(local) as a, FeatureStore(distributed) as b:
        assert len(a) == len(b)
        assert a.paths == b.paths and a.signatures == b.signatures
        assert a.label_names == b.label_names and a.skipped == b.skipped
        for name in ("labels", "split", "ok", "groups", "near_pairs"):
            if name in a.file or name in b.file:
                np.testing.assert_array_equal(a.file[name][:], b.file[name][:], err_msg=name)
        assert sorted(a.file) == sorted(b.file)
        for name in set(a.file) - {"block_sha256"}:  # its blocks follow the read size
            assert a.file[name].shape == b.file[name].shape, name
            assert a.file[name].dtype == b.file[name].dtype, name
        attrs_a, attrs_b = a.attrs, b.attrs
        assert set(attrs_a) == set(attrs_b)
        differ = {k for k in attrs_a if attrs_a[k] != attrs_b[k]}
        # the pipeline records the engine; the checksum follows the (within atol) features;
        # checksum blocks are a read each: whole chunks locally, 4096 rows of a virtual store;
        # the duplicate groups' record holds the seconds their search took (its checksum too)
        timed = {"groups", "groups_sha256"} \
            if _untimed(attrs_a.get("groups")) == _untimed(attrs_b.get("groups")) else set()
        assert differ <= {"pipeline", "features_sha256", "check_rows"} | timed, differ
        assert attrs_b["pipeline"]["extract"]["engine"] == "ray"
        fa, fb = a.features(), b.features()
    # Random-weight features are ~1e-12: equal relative to their scale.
    assert_close(fb, fa, rtol=atol)
    return float(np.abs(fa - fb).max())


def _untimed(groups: str | dict | None) -> dict:
    """A store's record of its duplicate groups (JSON text or parsed), its seconds left out."""
    info = json.loads(groups) if isinstance(groups, str) else dict(groups or {})
    info.pop("seconds", None)
    return info


# --- tiny data, random weights: fast ------------------------------------------------------------

def test_ray_store_equals_local_store(cluster, tiny_store, tmp_path):
    config = ray_config(tiny_store.config, tmp_path / "cache", cluster.address,
                        shard_rows=5, batch_size=4)
    result = extract(config, progress=False)
    assert not result.cache_hit and result.rows == tiny_store.rows == 18
    assert result.path.name == tiny_store.path.name  # same settings key, same file name
    assert assert_same_store(tiny_store.path, result.path) <= 1e-5
    with h5py.File(result.path, "r") as f:
        assert f["features"].is_virtual
        sources = sorted({m.file_name for m in f["features"].virtual_sources()})
    shards = shard_dir(result.path, result.key)
    assert len(sources) == 4 and all(not Path(s).is_absolute() for s in sources)
    assert sorted(p.name for p in shards.glob("shard-*.h5")) == [Path(s).name for s in sources]
    assert cache.verify(result.path) == []
    (entry,) = cache.entries(result.path.parent)  # featx cache ls counts the shard files
    assert entry.bytes == result.path.stat().st_size + sum(
        p.stat().st_size for p in shards.glob("shard-*.h5"))
    # the cache folder moves as a whole: the virtual dataset's paths are relative
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "cache", moved)
    assert assert_same_store(tiny_store.path, moved / result.path.name) <= 1e-5
    # a second run is a cache hit and needs no cluster
    again = extract(ray_config(config, moved, "127.0.0.1:1"), progress=False)
    assert again.cache_hit and again.path == moved / result.path.name
    # README: `featx cache rm` removes the shards with the store
    moved_shards = moved / shards.name
    assert len(list(moved_shards.glob("shard-*.h5"))) == 4
    assert main(["cache", "rm", result.key, "--cache-dir", str(moved)]) == 0
    assert not again.path.exists() and not moved_shards.exists()
    assert not list(moved.glob("*.h5")) and not list(moved.glob("*.shards"))


def test_consolidated_store_is_one_file_like_the_local_one(cluster, tiny_store, tmp_path,
                                                         monkeypatch, capfd):
    """With --consolidate; and a run that fails as a whole (here: at once) is retried."""
    from featx.features import distributed

    real, calls = distributed._extract_shards, []

    def fail_once(*args, **kwargs):
        calls.append(args[4])  # the shards asked for
        if len(calls) == 1:
            raise ConnectionError("lost the node")
        return real(*args, **kwargs)

    monkeypatch.setattr(distributed, "_extract_shards", fail_once)
    config = ray_config(tiny_store.config, tmp_path, cluster.address, shard_rows=7,
                        batch_size=8, consolidate=True)
    result = extract(config, progress=False)
    assert calls == [[0, 1, 2], [0, 1, 2]]
    assert "retrying 3 unfinished shards" in capfd.readouterr().err
    assert assert_same_store(tiny_store.path, result.path) <= 1e-5
    with h5py.File(tiny_store.path, "r") as a, h5py.File(result.path, "r") as b:
        fa, fb = a["features"], b["features"]
        assert not fb.is_virtual
        assert (fb.chunks, fb.compression, fb.fletcher32) == (fa.chunks, fa.compression,
                                                               fa.fletcher32)
    assert not shard_dir(result.path, result.key).exists()
    assert cache.verify(result.path) == []


def test_resume_extracts_only_missing_shards(cluster, tiny_store, tmp_path, capfd, featx_info):
    config = ray_config(tiny_store.config, tmp_path, cluster.address, shard_rows=4)
    first = extract(config, progress=False)
    shards = shard_dir(first.path, first.key)
    assert len(list(shards.glob("shard-*.h5"))) == 5  # 4 + 4 + 4 + 4 + 2 rows
    # a lost shard file makes the store unusable, never silently zeros or NaNs
    (shards / "shard-00002.h5").unlink()
    with pytest.raises(StoreError, match="shard-00002.h5"):
        FeatureStore(first.path)
    assert any("shard-00002.h5" in p for p in cache.verify(first.path))
    # and what a crashed driver leaves: some whole shards, a half-written one, no store
    first.path.unlink()
    for i in (1, 4):
        (shards / f"shard-{i:05d}.h5").unlink()
    (shards / "shard-00001.tmp").write_bytes(b"half a shard")
    kept = {p.name: p.stat().st_mtime_ns for p in shards.glob("shard-*.h5")}
    assert sorted(kept) == ["shard-00000.h5", "shard-00003.h5"]
    capfd.readouterr()
    result = extract(config, progress=False)
    assert "resuming: 2 of 5 shards already extracted" in capfd.readouterr().err
    assert result.extracted == 4 + 4 + 2  # shards 1, 2 and 4, nothing else
    assert {p: (shards / p).stat().st_mtime_ns for p in kept} == kept
    assert not list(shards.glob("*.tmp"))
    assert assert_same_store(tiny_store.path, result.path) <= 1e-5


def test_a_killed_driver_resumes_from_its_finished_shards(cluster, image_folder, make_config,
                                                        tmp_path, capfd, featx_info):
    """SIGKILL a real `featx extract --engine ray` once it has written a shard; the next run
    keeps the finished shards as they are and extracts only the rest."""
    root = tmp_path / "data"
    image_folder(root, per_class=20, junk=False)  # 60 images, 15 shards of 4
    local = extract(make_config(root, tmp_path / "local"), progress=False)
    config = ray_config(make_config(root, tmp_path / "ray"), tmp_path / "ray", cluster.address,
                        shard_rows=4, batch_size=1)
    shards = shard_dir(tmp_path / "ray" / local.path.name, local.key)
    command = featx_command("extract", "--data", root, "--weights", "none", "--input-size",
                            "32", "--batch-size", "1", "--cache-dir", tmp_path / "ray",
                            "--engine", "ray", "--address", cluster.address,
                            "--set", "extract.shard_rows=4", "--no-progress")
    driver = subprocess.Popen(command, cwd=REPO, env=cluster.env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while driver.poll() is None and not list(shards.glob("shard-*.h5")) \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        assert driver.poll() is None, "the driver ended before it could be killed"
        os.kill(driver.pid, signal.SIGKILL)
    finally:
        if driver.poll() is None:
            driver.kill()
        driver.wait()
    kept = {p.name: p.stat().st_mtime_ns for p in shards.glob("shard-*.h5")}
    assert 1 <= len(kept) < 15, sorted(kept)
    assert not (tmp_path / "ray" / local.path.name).exists()
    capfd.readouterr()
    result = extract(config, progress=False)
    assert f"resuming: {len(kept)} of 15 shards already extracted" in capfd.readouterr().err
    assert result.extracted == 60 - 4 * len(kept)
    assert {p: (shards / p).stat().st_mtime_ns for p in kept} == kept
    assert_same_store(local.path, result.path)


def test_an_update_sends_only_new_images_to_the_cluster(cluster, image_folder, image_file,
                                                      make_config, tmp_path):
    """Images added and removed: the cluster extracts the new ones only; the first update
    rewrites the virtual store from its rows, the next appends a segment as the local
    engine does; both equal a local extraction of the data as it is then."""
    root = tmp_path / "data"
    written = image_folder(root, junk=False)
    config = ray_config(make_config(root, tmp_path / "ray"), tmp_path / "ray", cluster.address,
                        shard_rows=5, batch_size=4)
    first = extract(config, progress=False)
    assert first.extracted == 18
    for i in range(2):
        image_file(root / "cat" / f"new{i}.png", seed=100 + i)
    (root / written["dog"][0]).unlink()
    second = extract(config, progress=False)
    assert (second.extracted, second.reused, second.dropped) == (2, 17, 1)
    local = extract(make_config(root, tmp_path / "local"), progress=False)
    assert assert_same_store(local.path, second.path) <= 1e-5
    assert not first.path.exists() and not list((tmp_path / "ray").glob("*.shards"))
    image_file(root / "fox" / "new2.png", seed=102)
    third = extract(config, progress=False)
    assert (third.extracted, third.reused) == (1, 19)
    local = extract(make_config(root, tmp_path / "local"), progress=False)
    with FeatureStore(local.path) as a, FeatureStore(third.path) as b:
        assert b.segmented and a.paths == b.paths and a.signatures == b.signatures
        np.testing.assert_array_equal(a.labels, b.labels)
        assert_close(b.features(), a.features(), rtol=1e-5)
    assert cache.verify(third.path) == []


def test_grid_search_on_ray_equals_local(cluster, tiny_store, tmp_path):
    from featx.learn.classification import classify

    local = dataclasses.replace(tiny_store.config, out=str(tmp_path / "local"))
    local.classify = dataclasses.replace(local.classify, n_jobs=2)
    on_ray = dataclasses.replace(local, out=str(tmp_path / "ray"), ray_address=cluster.address)
    on_ray.classify = dataclasses.replace(local.classify, engine="ray")
    a = classify(local, tiny_store.path)
    b = classify(on_ray, tiny_store.path)
    assert [r["classifier"] for r in a] == [r["classifier"] for r in b] == ["logreg",
                                                                            "linear_svm"]
    for ra, rb in zip(a, b):
        assert ra["best_params"] == rb["best_params"]
        assert ra["cv_score"] == pytest.approx(rb["cv_score"], abs=1e-12)
        assert ra["rank1"] == rb["rank1"] and ra["rank5"] == rb["rank5"]


def test_search_on_ray_ran_on_the_cluster(cluster, tiny_store, tmp_path, monkeypatch):
    """Every cross-validation fit of the grid search ran in a Ray worker process of the
    cluster (recorded by the estimator itself), not in this process; the refit on all the
    training rows runs here."""
    import ray.cloudpickle
    from fitspy import WhereFit
    from sklearn.linear_model import LogisticRegression

    from featx.learn import learners
    from featx.learn.classification import classify

    ray.cloudpickle.register_pickle_by_value(sys.modules["fitspy"])
    monkeypatch.setattr(WhereFit, "log", str(tmp_path / "fits.log"))
    logreg = learners.LEARNERS["logreg"]
    spied = dataclasses.replace(logreg, make=lambda seed, cw=None: learners._scaled(
        WhereFit(max_iter=3000, class_weight=cw, random_state=seed)))
    assert isinstance(logreg.make(0)[-1], LogisticRegression)  # what the spy stands in for
    monkeypatch.setitem(learners.LEARNERS, "logreg", spied)
    config = dataclasses.replace(tiny_store.config, out=str(tmp_path / "out"),
                                 ray_address=cluster.address)
    config.classify = dataclasses.replace(config.classify, engine="ray", classifiers=["logreg"],
                                          n_jobs=-1)
    (result,) = classify(config, tiny_store.path)
    fits = [line.split() for line in (tmp_path / "fits.log").read_text().splitlines()]
    here = [fit for fit in fits if int(fit[0]) == os.getpid()]
    elsewhere = [fit for fit in fits if int(fit[0]) != os.getpid()]
    assert len(here) == 1  # the refit
    assert len(elsewhere) == len(logreg.grid["clf__C"]) * config.classify.cv
    # Ray's worker processes (gone by now) were started by a node of the cluster
    nodes = _family(cluster.head.pid) | _family(cluster.worker.pid)
    assert {int(parent) for _, parent, _ in elsewhere} <= nodes, (elsewhere, sorted(nodes))
    assert all(node != "-" for *_, node in elsewhere)  # inside Ray
    assert result["classifier"] == "logreg"


# --- Flowers-17, real weights, a worker killed mid-run -------------------------------------------

@pytest.mark.shared
def test_int8_on_the_cluster_equals_the_local_int8_store(cluster, make_config, tmp_path,
                                                       monkeypatch):
    """backbone.precision = "int8" (25 flowers5 photographs, ImageNet MobileNetV2 at 96 px:
    random weights quantise to zeros): the driver quantises the model once, the actors get
    the calibration sample with their config and run that model; the store equals the local
    engine's int8 store row for row."""
    from realdata import flowers5_subset

    import featx.features.runtime as runtime

    if not WEIGHTS.is_file():
        unavailable(f"needs {WEIGHTS}")
    root = flowers5_subset(tmp_path / "flowers5", 5)
    config = make_config(root, tmp_path / "local", extract={"batch_size": 4},
                         backbone={"weights": str(WEIGHTS), "input_size": 96,
                                   "runtime": "openvino", "precision": "int8",
                                   "calibration_images": 8})
    local = extract(config, progress=False)
    calls, real = [], runtime.quantize

    def spy(model, batches):
        calls.append(sum(len(b) for b in batches))
        return real(model, batches)

    monkeypatch.setattr(runtime, "quantize", spy)
    distributed = extract(ray_config(config, tmp_path / "ray", cluster.address,
                                     shard_rows=10), progress=False)
    assert not distributed.cache_hit and distributed.rows == 25
    assert distributed.path.name == local.path.name  # the int8 store's key, calibration in
    assert calls == [8], "the driver quantises once, before the shards go out"
    with FeatureStore(distributed.path) as store:
        assert store.attrs["precision"] == "int8"
        assert store.attrs["pipeline"]["extract"]["engine"] == "ray"
    assert_same_store(local.path, distributed.path)


@pytest.mark.shared
@needs_shared
def test_flowers17_on_the_cluster_survives_a_worker_kill(cluster, flowers17, tmp_path):
    """The same job as the session's Flowers-17 store (realdata.py), on the cluster, with the
    worker node killed mid-run; the result must equal that store row for row."""
    local = store_of(flowers17)
    command = featx_command("extract", "-p", PIPELINE, "--data", FLOWERS17,
                            "--cache-dir", tmp_path / "ray", "--engine", "ray",
                            "--address", cluster.address, "--set", "extract.shard_rows=340",
                            "--batch-size", "16", "--no-progress")
    with FeatureStore(local) as store:
        shards = shard_dir(tmp_path / "ray" / local.name, store.attrs["key"])
    t0 = time.perf_counter()
    # ImageNet weights from the cluster's seeded KERAS_HOME, here and on every node
    driver = subprocess.Popen(command, cwd=REPO, env=cluster.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        while not list(shards.glob("shard-*.h5")) and driver.poll() is None \
                and time.perf_counter() - t0 < 400:
            time.sleep(0.2)
        assert driver.poll() is None, driver.communicate()
        # the worker node holds one of the extraction actors (one per node)
        deadline = time.monotonic() + 120
        while not _actors(cluster.worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        actors = _actors(cluster.worker)
        assert actors, "no extraction actor on the worker node"
        assert len(list(shards.glob("shard-*.h5"))) < 4, "finished before the kill"
        # the worker node as a machine dies: its raylet, its helpers and its actor at once
        killed = cluster.kill(cluster.worker)
        assert set(actors) <= killed
        assert cluster.gone(killed, 20)
        killed_at = time.perf_counter() - t0
        out, err = driver.communicate(timeout=500)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    ray_seconds = time.perf_counter() - t0
    assert driver.returncode == 0, err[-3000:]
    assert "extracted 1360 images" in out, out
    # Ray saw the actor of the killed node die and rescheduled it (its batches retried); the
    # driver may also have retried whole shards (printed below)
    assert cluster.worker_node_id in cluster.rescheduled_actor_nodes(), cluster.logs()
    diff = assert_same_store(local, tmp_path / "ray" / local.name)
    assert cache.verify(tmp_path / "ray" / local.name) == []
    notes = "\n".join(line for line in err.splitlines() if line.startswith("featx:"))
    print(f"\nflowers17: 1360 rows, max |local - ray| = {diff:.2e}; ray {ray_seconds:.1f}s "
          f"(worker node killed at {killed_at:.1f}s)\n{notes}")
