"""Every file and folder name in the cache folder, made and parsed back here only.

A store is named by what it holds::

    <dataset>-<backbone>-<pooling>-<content key>.h5

``<dataset>`` is only a readable prefix (the folder or manifest name, made file-safe; it may
contain hyphens, so names are parsed from the right). The content key is a hash of the
extraction settings and of the image manifest (relative paths, labels, signatures), so the
same files under another folder name or path find the same store, and another dataset that
happens to have the same folder name gets a store of its own. Beside a store::

    <store>.h5.lock                 one extraction at a time
    <store>.h5.<key>.partial/       block-NNNNNN.npz (+ .sha256) and meta.json: finished
                                    blocks of an unfinished local extraction
    <store>.h5.<key>.shards/        shard-NNNNN.h5 and meta.json: shard files of a Ray
                                    extraction (a virtual store reads them)
    <store>.h5.assembling           a store being written (renamed into place when complete)
    <store>.h5.segments/            seg-NNN.h5: the feature segments of an updated store
    <store>.h5.verified             the file version whose checksums were last checked in full
    <store>.runs/                   classification results (a run folder each)
    <store>.audit/                  featx audit's page and table
    <store>.sweep/                  featx sweep's table, chart and page

``FeatureExtractor`` (featx/features/transformer.py) lists images it is given by path in a
manifest of
their own, and extracts them into a store as ``featx extract`` would::

    transform-manifests/transform-<hash>.csv

The OpenVINO runtime (featx/features/runtime.py) keeps each converted backbone once, shared by every
store made with it (key: backbone, weights identity, layers, pooling, input size, batch size,
library versions)::

    openvino/<backbone>-b<batch>-<key>/model.xml, model.bin, sha256.json
    openvino/<backbone>-int8-b<batch>-<key>/...  (backbone.precision = "int8")

Fine-tuning trains on decoded images, not on a store::

    <dataset>-<backbone>-finetune.runs/            its results
    <dataset>-<backbone>-finetune-<key>.ckpt       the checkpoint of an unfinished fine-tuning
                                                   (key: settings, images and split)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STORE_SUFFIX = ".h5"


def safe_name(name: str) -> str:
    """``name`` with every character but letters, digits and ``-_.`` replaced by ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def store_prefix(dataset_name: str, backbone: str, pooling: str) -> str:
    """What every version of a dataset's store with this backbone and pooling starts with
    (each part a plain file name: ``hub:dinov2_small`` and ``cls+mean`` are written
    ``hub_dinov2_small`` and ``cls_mean``; keras.applications' names are that already)."""
    return f"{safe_name(dataset_name)}-{safe_name(backbone)}-{safe_name(pooling)}-"


def store_path(cache_dir: Path, dataset_name: str, backbone: str, pooling: str,
               key: str) -> Path:
    return Path(cache_dir) / f"{store_prefix(dataset_name, backbone, pooling)}{key}{STORE_SUFFIX}"


@dataclass(frozen=True)
class StoreName:
    dataset: str
    backbone: str
    pooling: str
    key: str


def parse_store_name(name: str) -> StoreName:
    """The parts of a store's file name (or of a name that starts with one, such as its
    ``.partial`` folder). A dataset name may hold hyphens: the other parts never do."""
    stem = name.split(STORE_SUFFIX, 1)[0] if STORE_SUFFIX in name else name
    parts = stem.rsplit("-", 3)
    if len(parts) < 4:
        return StoreName(stem, "?", "?", "?")
    return StoreName(*parts)


def lock_path(store: Path) -> Path:
    return Path(str(store) + ".lock")


def partial_dir(store: Path, content_key: str) -> Path:
    return Path(store).with_name(Path(store).name + f".{content_key}.partial")


def shard_dir(store: Path, content_key: str) -> Path:
    """Where the Ray engine (featx.features.distributed) keeps the shard files of a store."""
    return Path(store).with_name(Path(store).name + f".{content_key}.shards")


def job_meta(folder: Path) -> Path:
    """What an unfinished extraction's folder (blocks or shards) was made for."""
    return Path(folder) / "meta.json"


def block_file(folder: Path, index: int) -> Path:
    """One finished block of a local extraction (its SHA-256 beside it: ``.sha256``)."""
    return Path(folder) / f"block-{index:06d}.npz"


def block_files(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("block-*.npz"))


def shard_file(folder: Path, index: int) -> Path:
    """One shard file of a Ray extraction."""
    return Path(folder) / f"shard-{index:05d}.h5"


def shard_files(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("shard-*.h5"))


def assembling_path(store: Path) -> Path:
    return Path(store).with_name(Path(store).name + ".assembling")


def segments_dir(store: Path) -> Path:
    """The feature segments of a store updated in place (featx/store/, ``append_store``)."""
    return Path(str(store) + ".segments")


def segment_name(index: int) -> str:
    return f"seg-{index:03d}.h5"


def segment_files(store: Path) -> list[Path]:
    return sorted(segments_dir(store).glob("seg-*.h5"))


def verified_stamp(store: Path) -> Path:
    return Path(str(store) + ".verified")


def runs_dir(store: Path) -> Path:
    return Path(store).with_name(Path(store).stem + ".runs")


def audit_dir(store: Path) -> Path:
    return Path(store).with_name(Path(store).stem + ".audit")


def sweep_dir(store: Path) -> Path:
    return Path(store).with_name(Path(store).stem + ".sweep")


def transform_manifest(cache_dir: Path, digest: str) -> Path:
    """The manifest of the images a ``FeatureExtractor`` was given by path."""
    return Path(cache_dir) / "transform-manifests" / f"transform-{digest}.csv"


def store_files(cache_dir: Path) -> list[Path]:
    return sorted(Path(cache_dir).glob("*" + STORE_SUFFIX))


def partial_dirs(cache_dir: Path, store: Path | None = None) -> list[Path]:
    """Unfinished extractions: all of the folder, or those of ``store``."""
    pattern = (Path(store).name if store else "*" + STORE_SUFFIX) + ".*.partial"
    return sorted(Path(cache_dir).glob(pattern))


def partial_key(partial: Path) -> str:
    return partial.name.rsplit(".", 2)[-2]


def belongings(store: Path) -> list[Path]:
    """Everything in the cache folder that belongs to ``store`` but its results."""
    store = Path(store)
    return [store, lock_path(store), verified_stamp(store), assembling_path(store),
            segments_dir(store),
            *store.parent.glob(store.name + ".*.partial"),
            *store.parent.glob(store.name + ".*.shards")]


OPENVINO_DIR = "openvino"


def converted_model_dir(cache_dir: Path, backbone: str, batch_size: int, key: str,
                        precision: str = "float32") -> Path:
    """The folder holding one converted backbone (written whole, then renamed into place);
    an int8 one is ``<backbone>-int8-b<batch>-<key>`` (featx cache ls shows it so)."""
    name = safe_name(backbone) + ("-int8" if precision == "int8" else "")
    return Path(cache_dir) / OPENVINO_DIR / f"{name}-b{batch_size}-{key}"


def converted_model_file(folder: Path) -> Path:
    """The model file in a converted model's folder (its weights are beside it, .bin)."""
    return Path(folder) / "model.xml"


def converted_model_checksums(folder: Path) -> Path:
    """The SHA-256 of each file of a converted model, written with it and checked whenever it
    is read: a damaged model would give every row of a store the wrong features."""
    return Path(folder) / "sha256.json"


def converted_model_dirs(cache_dir: Path) -> list[Path]:
    """Every converted model's folder, and the temporary ones a killed conversion left
    (``.<name>.<random>``)."""
    folder = Path(cache_dir) / OPENVINO_DIR
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def parse_converted_name(name: str) -> tuple[str, int, str]:
    """(backbone, batch size, key) of a converted model's folder name ("?", 0, name for
    anything else, such as a temporary folder)."""
    backbone, batch, key = (name.rsplit("-", 2) + ["", ""])[:3]
    if name.startswith(".") or not batch.startswith("b") or not batch[1:].isdigit():
        return "?", 0, name
    return backbone, int(batch[1:]), key


FINETUNE = "finetune"
CHECKPOINT_SUFFIX = ".ckpt"


def finetune_runs_dir(cache_dir: Path, dataset_name: str, backbone: str) -> Path:
    return Path(cache_dir) / f"{safe_name(dataset_name)}-{safe_name(backbone)}-{FINETUNE}.runs"


def checkpoint_path(cache_dir: Path, dataset_name: str, backbone: str, key: str) -> Path:
    return Path(cache_dir) / f"{safe_name(dataset_name)}-{safe_name(backbone)}-{FINETUNE}-{key}" \
        f"{CHECKPOINT_SUFFIX}"


def checkpoint_files(cache_dir: Path) -> list[Path]:
    return sorted(Path(cache_dir).glob(f"*-{FINETUNE}-*{CHECKPOINT_SUFFIX}"))


def parse_checkpoint_name(name: str) -> StoreName:
    """The parts of a checkpoint's file name (``pooling`` is "finetune")."""
    return parse_store_name(name.removesuffix(CHECKPOINT_SUFFIX))
