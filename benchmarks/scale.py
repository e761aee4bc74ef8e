"""featx cost against the size of the data: `make bench-scale` (``--quick``: up to 100k).

    .venv/bin/python benchmarks/scale.py [--quick] [--extract-1m] [--work DIR]
    .venv/bin/python benchmarks/scale.py --updates [--sizes 10000,1000000]   # ~10 min

For N = 10k, 100k and 1M synthetic images (benchmarks/synthetic.py: hard links to 300 small
JPEGs, 10 class folders, 1,000 files a sub-folder; MobileNetV2, random weights, 32 px,
avg pooling: 1,280 features a row) it measures, each operation in a fresh process (so that
peak RSS, VmHWM, is the operation's own):

* extract: a full extraction into an empty cache (img/s, peak RSS). Up to 100k; at 1M only
  with ``--extract-1m`` (~15 min here). Otherwise the 1M store is assembled by featx's own
  writer (``write_store``) from the 10k store's rows of the same source JPEGs: the same
  bytes give the same features, so it is the store an extraction would write.
* hit: ``extract()`` on an unchanged dataset: listing, one stat a file, the content key,
  opening the store (column checksum). Page cache warm, as for a second command.
* add 0.1%: N/1000 new images, then ``extract()`` (appends a segment), against ``empty``:
  the same number of images extracted into an empty cache (model build included in both).
* remove 0.1%: N/1000 images deleted, then ``extract()`` (a new small store file).
* sgd: the out-of-core learner, one epoch over the training rows from the store
  (``StreamingSGD.fit_passes`` over ``store_passes``): fit seconds and peak RSS.

Targets: hit at 1M <= 30 s; add <= 3x empty; peak RSS of extract, of adding 0.1% and of sgd
at the largest N within 1.2x of 10k. The machine may be shared: read the ratios. Writes
docs/scale.png.

``--updates`` measures updates only (no hit, remove or sgd; no plot): at each N (10k and
1M), the store (extracted at 10k, assembled at 1M), then 0.1% added and ``extract()`` run
again, once at 10k and SEGMENTS_MAX + 2 times at 1M (so that its small segments are merged
past the limit), each in a fresh process, against ``empty`` (the same number of images
into an empty cache). Targets: the peak RSS of every update of the 1M store <= 1.2x that
of the update of the 10k store; every update of the 1M store <= 3x empty.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import synthetic  # noqa: E402

TARGET_HIT_S = 30.0
TARGET_ADD = 3.0
TARGET_RSS = 1.2


def config(root: Path, cache: Path):
    from featx.core.config import Config

    c = Config()
    c.dataset.root = str(root)
    c.backbone.weights = "none"
    c.backbone.input_size = 32
    c.extract.batch_size = 64
    c.cache_dir = str(cache)
    return c


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------ child operations

def child(op: str, root: str, cache: str, extra: str) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from featx.features.extraction import extract

    c = config(Path(root), Path(cache))
    t0 = time.perf_counter()
    if op in ("extract", "hit", "update"):
        written = when_written(t0)
        r = extract(c, progress=False)
        out = {"cache_hit": r.cache_hit, "extracted": r.extracted, "rows": r.rows,
               "rate": r.images_per_second, "path": str(r.path),
               "seconds": time.perf_counter() - t0, "rss_mb": peak_rss_mb(), **written}
        out["segments"] = segment_rows(r.path)  # after the measures: h5py reads the attribute
    elif op == "assemble":
        out = assemble(c, Path(extra))
    elif op == "sgd":
        out = sgd(Path(extra))
    else:
        raise SystemExit(f"unknown op {op}")
    out.setdefault("seconds", time.perf_counter() - t0)
    out.setdefault("rss_mb", peak_rss_mb())
    return out


def when_written(t0: float) -> dict:
    """Filled in when extraction has written the store (``write_update`` returns): seconds
    since ``t0`` and peak RSS so far, ``written_s`` and ``written_rss_mb``. What follows
    (the duplicate groups and the split by them) is counted in ``seconds`` only."""
    import featx.features.extraction as extraction

    written: dict = {}
    original = extraction.write_update

    def timed(*args, **kwargs):
        skipped = original(*args, **kwargs)
        written.update(written_s=time.perf_counter() - t0, written_rss_mb=peak_rss_mb())
        return skipped

    extraction.write_update = timed
    return written


def segment_rows(path: Path) -> list[int]:
    """The rows of each segment of a store (one: a store written whole)."""
    import h5py

    with h5py.File(path, "r") as f:
        if "segments" not in f.attrs:
            return [int(f["labels"].shape[0])]
        return [int(s["rows"]) for s in json.loads(f.attrs["segments"])]


def assemble(c, small: Path) -> dict:
    """The store of ``c``'s dataset from ``small``'s rows of the same source files."""
    import numpy as np

    from featx.features.extraction import duplicate_rows
    from featx.features.plan import plan, store_attrs
    from featx.store.read import FeatureStore
    from featx.store.write import RowSource, write_duplicates, write_store

    p = plan(c)
    p.path.parent.mkdir(parents=True, exist_ok=True)
    by_source: dict[int, int] = {}
    with FeatureStore(small) as s:
        for row, rel in enumerate(s.paths):
            if "/img" in rel:  # not the images its updates added (new*.jpg)
                i = int(rel.rsplit("img", 1)[1][:7])
                by_source.setdefault((i * 7919) % 300, row)
        old_row = np.asarray([by_source[(int(rel.rsplit("img", 1)[1][:7]) * 7919) % 300]
                              for rel in p.dataset.paths], np.int64)
        d = p.dataset
        write_store(p.path, feature_shape=s.feature_shape,
                    source=RowSource(old_row), old=s, blocks=None,
                    paths=d.paths, signatures=p.signatures, labels=d.labels,
                    label_names=d.label_names, split=p.split,
                    attrs={**store_attrs(c, p), "feature_shape": list(s.feature_shape)})
    write_duplicates(p.path, duplicate_rows(d, p.signatures))
    return {"rows": len(old_row), "path": str(p.path)}


def sgd(store: Path) -> dict:
    import numpy as np

    from featx.data.dataset import TRAIN
    from featx.learn.learners import StreamingSGD, store_passes
    from featx.store.read import FeatureStore

    with FeatureStore(store) as s:
        rows = np.flatnonzero((s.split == TRAIN) & s.ok)
        labels = s.labels
        t0 = time.perf_counter()
        StreamingSGD(alpha=1e-3, epochs=1).fit_passes(store_passes(s, rows, labels),
                                                      labels[rows])
        return {"fit_seconds": time.perf_counter() - t0, "train_rows": len(rows)}


def run_child(op: str, root: Path, cache: Path, extra: str = "") -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, __file__, "_child", op, str(root), str(cache),
                           extra], env=env, capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise RuntimeError(f"{op} {root}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ driver

def log(message: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", flush=True)


def store_bytes(path: Path) -> int:
    seg = Path(str(path) + ".segments")
    return path.stat().st_size + sum(p.stat().st_size for p in seg.glob("*.h5"))


def remove_added(root: Path) -> None:
    """Remove the images an earlier run's updates added to the synthetic dataset ``root``."""
    for extra in root.glob("class-*/d*/new*.jpg"):
        extra.unlink()


def fresh(work: Path, n: int, cache_name: str) -> tuple[Path, Path]:
    """The synthetic dataset of ``n`` images as generated (made where missing, what earlier
    runs added removed) and its empty cache folder ``cache_name`` under ``work``: (dataset
    root, cache folder)."""
    root, cache = work / f"d{n}", work / cache_name
    made = synthetic.make(root, n)
    remove_added(root)
    log(f"N={n}: dataset ready ({made} new links)")
    shutil.rmtree(cache, ignore_errors=True)
    return root, cache


def measure(n: int, work: Path, small_store: Path | None, extract_big: bool) -> dict:
    root, cache = fresh(work, n, f"cache{n}")
    row: dict = {"n": n}
    if small_store is None or n <= 100_000 or extract_big:
        got = run_child("extract", root, cache)
        row.update(extract_s=got["seconds"], rate=got["rate"], extract_rss=got["rss_mb"])
        path = Path(got["path"])
    else:
        got = run_child("assemble", root, cache, str(small_store))
        row.update(assemble_s=got["seconds"])
        path = Path(got["path"])
    row["store_mb"] = store_bytes(path) / 2**20
    log(f"N={n}: store {path.name} ({row['store_mb']:.0f} MiB)")
    hits = [run_child("hit", root, cache) for _ in range(2)]
    assert all(h["cache_hit"] for h in hits)
    row["hit_s"] = min(h["seconds"] for h in hits)
    k = max(1, n // 1000)
    add_images(root, n, k)
    got = run_child("update", root, cache)
    assert got["extracted"] == k, got
    row["add_s"], row["add_rss"] = got["seconds"], got["rss_mb"]
    row["empty_s"] = into_empty(work, k)["seconds"]
    for i in range(k):  # 0.1% of the original images
        synthetic.image_path(root, i * (n // k) + 1, 10).unlink()
    got = run_child("update", root, cache)
    row["remove_s"] = got["seconds"]
    path = Path(got["path"])
    got = run_child("sgd", root, cache, str(path))
    row.update(sgd_s=got["fit_seconds"], sgd_rss=got["rss_mb"])
    log(f"N={n}: {json.dumps({k: round(v, 2) for k, v in row.items()})}")
    remove_added(root)  # back to the dataset as generated, for a later run
    synthetic.make(root, n)
    return row


def add_images(root: Path, n: int, k: int, tag: str = "") -> None:
    """``k`` new files (hard links to the sources) in the folders they would arrive in,
    spread over the dataset of ``n`` images; ``tag`` tells one update's from another's."""
    src = synthetic.sources(root)
    for i in range(k):
        dest = synthetic.image_path(root, i * (n // k), 10).with_name(f"new{tag}{i:07d}.jpg")
        os.link(src[i % len(src)], dest)


def into_empty(work: Path, k: int) -> dict:
    """``k`` images extracted into an empty cache (a fresh process): its measures; 10
    classes, or fewer of 5 images each (a class needs an image to train on and one to test
    on)."""
    empty_root, empty_cache = work / f"empty{k}", work / f"emptycache{k}"
    shutil.rmtree(empty_cache, ignore_errors=True)
    shutil.rmtree(empty_root, ignore_errors=True)
    synthetic.make(empty_root, k, classes=max(1, min(10, k // 5)))
    return run_child("extract", empty_root, empty_cache)


def measure_updates(work: Path, sizes: list[int]) -> list[dict]:
    """Per N: the store, then 0.1% added and updated, once (the smallest N) or past the
    segment limit (SEGMENTS_MAX + 2 times: the others), each update in a fresh process;
    and the same number of images into an empty cache."""
    from featx.store.write import SEGMENTS_MAX

    rows, small = [], None
    for n in sizes:
        root, cache = fresh(work, n, f"updates{n}")
        got = run_child("extract", root, cache) if small is None else \
            run_child("assemble", root, cache, str(small))
        log(f"N={n}: store in {got['seconds']:.0f} s")
        k = max(1, n // 1000)
        row: dict = {"n": n, "k": k, "updates": []}
        for u in range(1 if small is None else SEGMENTS_MAX + 2):
            add_images(root, n, k, f"{u:02d}")
            got = run_child("update", root, cache)
            assert got["extracted"] == k, got
            row["updates"].append(got)
            log(f"N={n}: update {u + 1}: store written in {got['written_s']:.1f} s "
                f"({got['written_rss_mb']:.0f} MiB), all {got['seconds']:.1f} s "
                f"({got['rss_mb']:.0f} MiB), segments {got['segments']}")
        row["empty"] = into_empty(work, k)
        rows.append(row)
        small = small or Path(got["path"])
    for n in sizes:  # back to the datasets as generated, for a later run
        remove_added(work / f"d{n}")
    return rows


def report_updates(rows: list[dict]) -> None:
    """The table of ``measure_updates``, and PASS/FAIL per target: counted up to the store
    written, and for the whole ``extract()`` call (duplicate groups and split included)."""
    print()
    print(f"{'N':>9} {'update':>6} | {'written s':>9} {'x empty':>7} {'RSS MiB':>7} | "
          f"{'all s':>6} {'x empty':>7} {'RSS MiB':>7} | segments after (rows)")
    for r in rows:
        e = r["empty"]
        print(f"{r['n']:>9} {'empty':>6} | {e['written_s']:>9.1f} {1:>7.2f} "
              f"{e['written_rss_mb']:>7.0f} | {e['seconds']:>6.1f} {1:>7.2f} "
              f"{e['rss_mb']:>7.0f} | ({r['k']} images into an empty cache)")
        for u, got in enumerate(r["updates"], 1):
            shown = got["segments"] if len(got["segments"]) <= 4 else \
                f"{got['segments'][:2]} ... ({len(got['segments'])})"
            print(f"{r['n']:>9} {u:>6} | {got['written_s']:>9.1f} "
                  f"{got['written_s'] / e['written_s']:>7.2f} {got['written_rss_mb']:>7.0f} | "
                  f"{got['seconds']:>6.1f} {got['seconds'] / e['seconds']:>7.2f} "
                  f"{got['rss_mb']:>7.0f} | {shown}")
    print()
    base, big = rows[0], rows[-1]
    for what, seconds, rss in (("until the store is written", "written_s", "written_rss_mb"),
                               ("the whole extract() call", "seconds", "rss_mb")):
        ratio = max(got[rss] for got in big["updates"]) / base["updates"][0][rss]
        worst = max(range(len(big["updates"])), key=lambda u: big["updates"][u][seconds])
        slow = big["updates"][worst][seconds] / big["empty"][seconds]
        for name, ok, got in (
                (f"peak RSS of adding 0.1% to the {big['n']} store <= {TARGET_RSS}x "
                 f"{base['n']}, {what} (the highest of {len(big['updates'])} updates)",
                 ratio <= TARGET_RSS, f"{ratio:.2f}x"),
                (f"every update of the {big['n']} store <= {TARGET_ADD:.0f}x an update into "
                 f"an empty store, {what}", slow <= TARGET_ADD,
                 f"worst {slow:.2f}x (update {worst + 1})")):
            print(f"  {'PASS' if ok else 'FAIL'}  {name}: {got}")


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("hit_s", "cache hit"), ("add_s", "add 0.1%"),
                       ("remove_s", "remove 0.1%"), ("empty_s", "0.1% into empty cache"),
                       ("sgd_s", "sgd, 1 epoch"), ("extract_s", "full extraction")):
        pts = [(r["n"], r[key]) for r in rows if key in r]
        if pts:
            a.loglog(*zip(*pts), "o-", label=label)
    a.set_xlabel("images (N)")
    a.set_ylabel("seconds")
    a.legend(fontsize=8)
    a.grid(True, which="both", alpha=0.3)
    for key, label in (("extract_rss", "extraction RSS"), ("add_rss", "add 0.1% RSS"),
                       ("sgd_rss", "sgd learner RSS")):
        pts = [(r["n"], r[key]) for r in rows if key in r]
        if pts:
            b.semilogx(*zip(*pts), "o-", label=label)
    pts = [(r["n"], r["store_mb"]) for r in rows]
    b.loglog(*zip(*pts), "s--", label="store size (MiB)")
    b.set_xlabel("images (N)")
    b.set_ylabel("peak RSS / size (MiB)")
    b.legend(fontsize=8)
    b.grid(True, which="both", alpha=0.3)
    fig.suptitle("featx cost against N (synthetic, MobileNetV2 32 px, shared 2-core machine)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=80)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        print(json.dumps(child(*argv[1:5])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="stop at 100k")
    ap.add_argument("--extract-1m", action="store_true", help="extract the 1M store too")
    ap.add_argument("--work", type=Path, default=Path("/tmp/featx-scale"))
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=None)
    ap.add_argument("--plot", type=Path, default=REPO / "docs" / "scale.png")
    ap.add_argument("--updates", action="store_true",
                    help="only updates: 0.1%% added at 10k, and at 1M past the segment limit")
    args = ap.parse_args(argv)
    if args.updates:
        args.work.mkdir(parents=True, exist_ok=True)
        report_updates(measure_updates(args.work, args.sizes or [10_000, 1_000_000]))
        return 0
    sizes = args.sizes or ([10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000])
    args.work.mkdir(parents=True, exist_ok=True)
    rows, small = [], None
    for n in sizes:
        rows.append(measure(n, args.work, small, args.extract_1m))
        if small is None:  # the 10k store (after its updates: same source rows)
            small = next((args.work / f"cache{n}").glob("*.h5"))
    print()
    print(f"{'N':>9} {'extract img/s':>13} {'extract RSS':>11} {'store MiB':>9} "
          f"{'hit s':>6} {'add s':>6} {'empty s':>7} {'add/empty':>9} {'remove s':>8} "
          f"{'sgd s':>6} {'sgd RSS':>7} {'add RSS':>7}")
    for r in rows:
        rate = f"{r['rate']:.0f}" if "rate" in r else "assembled"
        rss = f"{r['extract_rss']:.0f}" if "extract_rss" in r else "-"
        print(f"{r['n']:>9} {rate:>13} {rss:>11} {r['store_mb']:>9.0f} {r['hit_s']:>6.1f} "
              f"{r['add_s']:>6.1f} {r['empty_s']:>7.1f} {r['add_s'] / r['empty_s']:>9.2f} "
              f"{r['remove_s']:>8.1f} {r['sgd_s']:>6.1f} {r['sgd_rss']:>7.0f} "
              f"{r['add_rss']:>7.0f}")
    print()
    big, base = rows[-1], rows[0]
    checks = []
    if big["n"] >= 1_000_000:
        checks.append((f"cache hit at {big['n']} <= {TARGET_HIT_S:.0f} s",
                       big["hit_s"] <= TARGET_HIT_S, f"{big['hit_s']:.1f} s"))
    for r in rows:
        checks.append((f"add 0.1% at {r['n']} <= {TARGET_ADD:.0f}x into an empty store",
                       r["add_s"] <= TARGET_ADD * r["empty_s"],
                       f"{r['add_s'] / r['empty_s']:.2f}x"))
    with_rss = [r for r in rows if "extract_rss" in r]
    if len(with_rss) > 1:
        ratio = with_rss[-1]["extract_rss"] / with_rss[0]["extract_rss"]
        checks.append((f"extraction peak RSS at {with_rss[-1]['n']} <= {TARGET_RSS}x 10k",
                       ratio <= TARGET_RSS, f"{ratio:.2f}x"))
    ratio = big["add_rss"] / base["add_rss"]
    checks.append((f"peak RSS of adding 0.1% at {big['n']} <= {TARGET_RSS}x {base['n']}",
                   ratio <= TARGET_RSS, f"{ratio:.2f}x"))
    ratio = big["sgd_rss"] / base["sgd_rss"]
    checks.append((f"sgd peak RSS at {big['n']} <= {TARGET_RSS}x {base['n']}",
                   ratio <= TARGET_RSS, f"{ratio:.2f}x"))
    for name, ok, got in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}: {got}")
    plot(rows, args.plot)
    print(f"\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
