"""The ``featx`` command: extract, classify, and helpers. Every flag overrides a pipeline field."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import warnings
from collections.abc import Mapping
from typing import Any

from featx import __version__
from featx.core.config import DEFAULT_CACHE_DIR, EXPORT_FORMATS, SHORTHANDS, Config
from featx.core.errors import FeatxError, StoreError, UsageError
from featx.core.escape import terminal
from featx.core.log import console, plural, results_to

# What add_subparsers returns: each builder below adds its subcommand to one.
_Subcommands = argparse._SubParsersAction
_CACHE_DIR_DEFAULT = f"$FEATX_CACHE_DIR or {DEFAULT_CACHE_DIR}"


def _declared(flag: str) -> tuple[Any, Mapping[str, Any]]:
    """The default and the metadata (``one_of``, ``within``) of the config field that
    ``--flag`` is the shorthand for (config.SHORTHANDS): config owns them, the CLI shows them."""
    *sections, name = SHORTHANDS[flag].split(".")
    owner: Any = Config()
    for section in sections:
        owner = getattr(owner, section)
    spec = next(f for f in dataclasses.fields(owner) if f.name == name)
    return getattr(owner, name), spec.metadata


def _one_of(flag: str) -> list[str]:
    return list(_declared(flag)[1]["one_of"])


def _global_flags(default: Any = argparse.SUPPRESS) -> argparse.ArgumentParser:
    """-q and -v, taken before and after the subcommand. argparse copies a subcommand's whole
    namespace over the main one, so on the subcommands they default to SUPPRESS: a flag given
    before the subcommand is not overwritten there. Only the main parser sets False."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-q", "--quiet", action="store_true", default=default,
                   help="warnings and errors only")
    p.add_argument("-v", "--verbose", action="store_true", default=default,
                   help="debug lines too, and TensorFlow's own start-up lines")
    return p


def _command(sub: _Subcommands, name: str, *parents: argparse.ArgumentParser,
             **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand's parser: ``parents``' flags, then the global flags, then its own."""
    return sub.add_parser(name, parents=[*parents, _global_flags()], **kwargs)


def _add_cache_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", help=f"default {_CACHE_DIR_DEFAULT}")


def _common() -> argparse.ArgumentParser:
    """The flags of every command that reads a pipeline: each overrides one of its fields."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--pipeline", "-p", help="pipeline TOML file (pipelines/*.toml)")
    p.add_argument("--data", help="dataset folder, one sub-folder per class")
    p.add_argument("--manifest", help="CSV of path,label instead of a folder")
    p.add_argument("--backbone", help="keras.applications name, e.g. MobileNetV2 "
                   "(featx backbones lists them)")
    p.add_argument("--weights", help='"imagenet" (Keras download/cache), a local weights file, '
                   'or "none" (random, seeded)')
    p.add_argument("--layer", help="layer to read (default: last convolutional output)")
    # flags that override a field default to None (the pipeline's value stands); the help
    # quotes the field's own default
    p.add_argument("--pooling", choices=_one_of("pooling"),
                   help=f"how the layer's output becomes one vector (default "
                   f"{_declared('pooling')[0]})")
    p.add_argument("--input-size", type=int, help="square input size (default: native)")
    p.add_argument("--batch-size", type=int,
                   help=f"images per pass through the frozen backbone (default "
                   f"{_declared('batch_size')[0]})")
    p.add_argument("--runtime", choices=_one_of("runtime"),
                   help="who runs the frozen backbone: tensorflow (default), openvino (CPU; "
                   "pip install 'featx[openvino]') or auto")
    p.add_argument("--cache-dir", help=f"feature store folder (default {_CACHE_DIR_DEFAULT})")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override any pipeline field, e.g. --set dataset.test=0.2")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featx", parents=[_global_flags(default=False)],
        description="Transfer learning by feature extraction: push images once through a "
                    "frozen ImageNet CNN into an HDF5 cache, then train classical classifiers "
                    "on the cached features in seconds.")
    parser.add_argument("--version", action="version", version=f"featx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_init, _add_extract, _add_classify, _add_finetune, _add_backbones,
                _add_layers,
                _add_cache, _add_predict, _add_export_model, _add_explain, _add_sweep, _add_audit,
                _add_runs,
                _add_demo_data):  # in this order in --help
        add(sub)
    return parser


# featx init's setting flags (config.SHORTHANDS): what a pipeline file then says once
_INIT_FLAGS = ("backbone", "weights", "layer", "pooling", "input_size", "batch_size", "runtime",
               "cache_dir")


def _add_init(sub: _Subcommands) -> None:
    p = _command(sub, "init", help="write a pipeline file: settings said once, -p thereafter",
                 description="Write a pipeline file (TOML, as pipelines/*.toml) holding the "
                 "dataset and the settings given here, and only those, so that later "
                 "commands need only -p FILE. Never replaces an existing file.")
    p.add_argument("data", metavar="DATA", help="dataset folder (one sub-folder per class) "
                   "or CSV manifest of path,label")
    p.add_argument("--backbone", help="keras.applications name (featx backbones lists them)")
    p.add_argument("--weights", help='"imagenet", a local weights file, or "none"')
    p.add_argument("--layer", help="layer(s) to read, comma-separated")
    p.add_argument("--pooling", choices=_one_of("pooling"))
    p.add_argument("--input-size", type=int, help="square input size")
    p.add_argument("--batch-size", type=int, help="images per pass through the backbone")
    p.add_argument("--runtime", choices=_one_of("runtime"),
                   help="tensorflow, openvino (CPU) or auto")
    _add_cache_dir(p)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="any other pipeline field, e.g. --set dataset.test=0.2")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="the pipeline file to write (default ./<dataset name>.toml)")


def _init(args: argparse.Namespace) -> int:
    import shlex
    from pathlib import Path

    from featx.core.layout import safe_name
    from featx.data.dataset import load_dataset
    from featx.features.backbones import Backbone

    config = Config.load(None, list(args.set))
    data = Path(args.data).expanduser().resolve()  # the file works from any folder
    config.assign("dataset.manifest" if data.is_file() else "dataset.root", str(data),
                  "command line")
    for flag in _INIT_FLAGS:
        value = getattr(args, flag)
        if value is None:
            continue
        if flag == "cache_dir" or (flag == "weights" and
                                   value.strip().lower() not in ("imagenet", "none", "")):
            value = str(Path(value).expanduser().resolve())
        config.assign(SHORTHANDS[flag], value, "command line")
    # what a later command would trip on, said now: the data and the backbone settings
    dataset = load_dataset(config.dataset)
    Backbone(config.backbone, seed=config.dataset.seed, cache_dir=config.cache_path)
    path = config.write(args.output or f"{safe_name(dataset.name)}.toml")
    print(f"wrote {terminal(path)} ({', '.join(config.given)})")
    print("next:")
    for command in ("extract", "classify"):
        print(f"  featx {command} -p {terminal(shlex.quote(str(path)))}")
    return 0


def _add_strict(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strict", action="store_true", default=None,
                   help="unreadable images are an error")


def _add_extract(sub: _Subcommands) -> None:
    p = _command(sub, "extract", _common(), help="images -> frozen CNN -> HDF5 store",
                 description="Extract features into the cache (a cache hit does nothing).")
    _add_strict(p)
    p.add_argument("--engine", choices=_one_of("engine"),
                   help="ray: on a Ray cluster (pip install featx[ray]; docs: how-to/ray.md)")
    p.add_argument("--address", help="Ray cluster address (default $RAY_ADDRESS, else a "
                   "Ray instance on this machine)")
    p.add_argument("--consolidate", action="store_true", default=None,
                   help="ray: copy the shard files into one store file")


def _add_store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", help="use this store (its file, or its key as featx cache ls "
                   "lists it) instead of locating it from the data")


def _add_grid_search(p: argparse.ArgumentParser, classifiers: str, quick: str) -> None:
    """The learner flags of classify and sweep (each with its own help)."""
    p.add_argument("--classifiers", help=classifiers)
    p.add_argument("--n-jobs", type=int, help="parallel grid-search jobs")
    p.add_argument("--quick", action="store_true", default=None, help=quick)


def _add_classify(sub: _Subcommands) -> None:
    p = _command(sub, "classify", _common(), help="HDF5 store -> classifiers -> report",
                 description="Fit the pipeline's classifiers on the cached training rows; "
                 "print rank-1/rank-5 on the test rows; write JSON, Markdown, HTML and a "
                 ".skops model into a new run folder beside the store (or under --out).")
    _add_store(p)
    # a list field: its one_of is checked per name by config, so here only in the help
    _add_grid_search(p, f"comma-separated: {', '.join(_one_of('classifiers'))}",
                     "a first look: each learner's reduced grid and 2 folds")
    p.add_argument("--repeats", type=int, metavar="R",
                   help="R stratified splits (seeds dataset.seed ...), scores as mean ± std")
    p.add_argument("--address", help="Ray cluster address for classify.engine = \"ray\"")
    p.add_argument("--out", help="folder for results and models")
    p.add_argument("--name", help="a name for the run: featx runs shows it and "
                   "featx runs --compare takes it")
    p.add_argument("--mlflow", nargs="?", const="on", metavar="URI",
                   help="log one MLflow run per classifier (pip install 'featx[mlflow]'): "
                   "to URI, or without one to <cache-dir>/mlflow.db (SQLite, artifacts in "
                   "<cache-dir>/mlflow-artifacts/)")


def _add_finetune(sub: _Subcommands) -> None:
    p = _command(sub, "finetune", _common(), help="images -> fine-tuned CNN -> report",
                 description="Fine-tune the backbone with a new head (the comparison to "
                 "feature extraction): warm the head up on the frozen base, then train the "
                 "top layers; report on the same test rows as classify. Writes JSON, Markdown "
                 "and a .keras model into a new run folder under <cache-dir>/<dataset>-"
                 "<backbone>-finetune.runs/ (or --out). Settings: [finetune] in the pipeline.")
    _add_strict(p)
    p.add_argument("--out", help="folder for results and the model")
    p.add_argument("--repeats", type=int, metavar="R",
                   help="fine-tune R times, on the splits of seeds dataset.seed ... (R times "
                   "the cost); scores as mean ± std")


def _add_backbones(sub: _Subcommands) -> None:
    _command(sub, "backbones", help="list the available backbones")


def _add_layers(sub: _Subcommands) -> None:
    p = _command(sub, "layers", help="list a backbone's layers and output shapes; draw its "
                 "first filters or what a layer's channels respond to",
                 description="List the layers of a backbone (or of a saved model's backbone) "
                 "with their output shapes; the stage ends (featx sweep's default layers) are "
                 "marked. --filters and --visualize draw PNGs instead (docs: "
                 "how-to/explain-and-audit.md).")
    p.add_argument("name", metavar="MODEL_OR_BACKBONE",
                   help="a backbone name (featx backbones) or a saved model / run folder")
    p.add_argument("--filters", action="store_true",
                   help="PNG of the first convolution's filters (one RGB tile each)")
    p.add_argument("--visualize", metavar="LAYER[:CHANNELS]",
                   help="PNG of an input grown by gradient ascent for each channel "
                   "(CHANNELS: e.g. 0-7,12; default the first 8)")
    p.add_argument("--out", default=".", metavar="DIR",
                   help="folder for filters-<backbone>.png and visualize-<backbone>-<layer>.png "
                   "(default .)")
    p.add_argument("--weights", help='a weights file, "imagenet" or "none"; default: random '
                   'weights for the listing, "imagenet" for the drawings, the model\'s own '
                   "for a model")
    p.add_argument("--input-size", type=int, default=_declared("input_size")[0],
                   help="square input size (default: native)")
    p.add_argument("--steps", type=int, default=None,
                   help="gradient-ascent steps for --visualize (default 60)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the starting noise and the jitter (default 0)")


def _add_cache(sub: _Subcommands) -> None:
    cache = _command(sub, "cache", help="list, inspect, verify or remove feature stores")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    for add in (_add_cache_ls, _add_cache_info, _add_cache_verify, _add_cache_rm,
                _add_cache_export):
        add(cache_sub)


def _cache_dir() -> argparse.ArgumentParser:
    """The cache commands' one shared flag (they read no pipeline)."""
    p = argparse.ArgumentParser(add_help=False)
    _add_cache_dir(p)
    return p


def _add_cache_ls(sub: _Subcommands) -> None:
    _command(sub, "ls", _cache_dir(), help="key, dataset, backbone, rows, size")


def _add_cache_info(sub: _Subcommands) -> None:
    p = _command(sub, "info", _cache_dir(), help="all recorded settings")
    p.add_argument("key")


def _add_cache_verify(sub: _Subcommands) -> None:
    p = _command(sub, "verify", _cache_dir(), help="check row counts, completeness and "
                 "checksums")
    p.add_argument("keys", nargs="*", help="default: every store and converted model")


def _add_cache_rm(sub: _Subcommands) -> None:
    p = _command(sub, "rm", _cache_dir(),
                 help="remove stores with their run folders and saved models",
                 description="Remove feature stores and, with each, every run folder beside "
                 "it (<store>.runs/: the classify results and saved models featx runs lists; "
                 "--out folders are not touched).")
    p.add_argument("keys", nargs="*", help="whole keys or file names, as `featx cache ls` "
                   "prints them (no prefixes)")
    p.add_argument("--all", action="store_true",
                   help="every store WITH its run folders and saved models, every unfinished "
                   "extraction, fine-tuning checkpoint and converted model")


def _add_cache_export(sub: _Subcommands) -> None:
    p = _command(sub, "export", _cache_dir(), help="write a store's features and metadata "
                 "as .npy + Parquet, .npz or Parquet", description="Stream a store's features "
                 "(float32, the store's row order) and metadata (path, label, label_name, "
                 "split, ok) into files other tools read: npy: features.npy beside "
                 "metadata.parquet (clip-retrieval's layout); npz: features.npz; parquet: "
                 "features.parquet (features as a list column). Parquet needs pyarrow (pip "
                 "install 'featx[export]').")
    p.add_argument("store", help="a store's key (as featx cache ls lists it) or its .h5 file")
    p.add_argument("--format", required=True, choices=list(EXPORT_FORMATS))
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the files")


def _add_predict(sub: _Subcommands) -> None:
    p = _command(sub, "predict", help="label images with a saved model (top-k)",
                 description="Rebuild the backbone a saved model was trained on, read the "
                 "images as extraction does and print the top-k labels per image.")
    p.add_argument("model", help="a run folder (its best rank-1 model) or a model file: "
                   "<run folder>/<pipeline>-<classifier>.skops")
    p.add_argument("--trust", action="store_true",
                   help="load a pickle/joblib model file (it can run any code: only a file "
                   "you trust), or a .skops file holding types featx does not trust")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER",
                   help="image files; folders are searched recursively for images")
    p.add_argument("--top", type=int, default=5, help="labels per image (default 5)")
    p.add_argument("--csv", nargs="?", const="-", metavar="FILE",
                   help="CSV of path,rank,label,score: to FILE, or instead of the table "
                   "on stdout when no FILE is given")
    p.add_argument("--weights", help="the weights file, where it is on this machine (must be "
                   "the same weights the model was trained with)")
    p.add_argument("--batch-size", type=int, default=32)


def _add_export_model(sub: _Subcommands) -> None:
    p = _command(sub, "export-model", help="write a saved model as one file that runs "
                 "without featx (SavedModel, ONNX, OpenVINO, LiteRT, .keras)",
                 description="Build one Keras model of what featx predict computes (uint8 "
                 "RGB images at the backbone's input size -> preprocessing -> frozen backbone "
                 "-> pooling -> the linear head) and write it through Keras' export; the "
                 "labels, input size and resize policy are stored in it. Resize images "
                 "outside it, as featx does. Needs pip install 'featx[export]' for onnx, "
                 "openvino and int8.")
    p.add_argument("model", help="a run folder (its best rank-1 model) or a model file: "
                   "<run folder>/<pipeline>-<classifier>.skops")
    # checked by featx.learn.deploy (FORMATS), which --help must not import (scikit-learn)
    p.add_argument("--format", required=True,
                   help="keras, savedmodel, onnx, openvino or litert")
    p.add_argument("--out", required=True, metavar="PATH",
                   help="the file to write (.keras, .onnx, .xml with its .bin, .tflite) or "
                   "a new folder (savedmodel)")
    p.add_argument("--int8", action="store_true",
                   help="litert and openvino: post-training int8 quantisation, "
                   "calibrated on the model's own training images")
    p.add_argument("--weights", help="the weights file, where it is on this machine (must be "
                   "the same weights the model was trained with)")
    p.add_argument("--trust", action="store_true",
                   help="load a pickle/joblib model file or a .skops file holding types featx "
                   "does not trust (only a file you trust)")


def _add_explain(sub: _Subcommands) -> None:
    p = _command(sub, "explain", help="why a saved model predicts what it does, per image",
                 description="Per image a PNG (and index.html gathering them): the top-k "
                 "classes, a class activation map, an occlusion-sensitivity map and the "
                 "nearest training images in the feature store (cosine).")
    p.add_argument("model", help="a run folder (its best rank-1 model) or a model file")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--out", default="explain", metavar="DIR",
                   help="folder for the PNGs and index.html (default ./explain)")
    p.add_argument("--top", type=int, default=5, help="classes listed per image (default 5)")
    p.add_argument("--class", dest="classes", action="append", default=[], metavar="NAME",
                   help="also map this class (repeat for several)")
    p.add_argument("--patch", type=int, help="occlusion patch side in input pixels "
                   "(default a quarter of the input size)")
    p.add_argument("--stride", type=int, help="occlusion step in input pixels (default half "
                   "the patch)")
    p.add_argument("--neighbours", type=int, default=5,
                   help="nearest training images shown (default 5; 0: none)")
    p.add_argument("--store", help="feature store to search, its file or its key (default: "
                   "the model's)")
    p.add_argument("--maps", metavar="LAYER",
                   help="also a PNG per image of this layer's most active feature maps "
                   "(featx layers lists the layers)")
    p.add_argument("--maps-top", type=int, default=16, metavar="N",
                   help="feature maps drawn per image with --maps (default 16)")
    p.add_argument("--weights", help="the weights file, where it is on this machine")
    p.add_argument("--trust", action="store_true", help="load a pickle/joblib model file")


def _add_sweep(sub: _Subcommands) -> None:
    p = _command(sub, "sweep", _common(),
                 help="which layer to read: rank-1 of each layer from one extraction pass",
                 description="Extract several layers of the backbone in one pass (one store), "
                 "fit the pipeline's classifiers on each layer's features alone and print "
                 "rank-1, feature size and fit time per layer (with --repeats R: mean ± sd "
                 "over R splits); writes sweep.md, sweep.json, sweep.png (rank-1 against "
                 "depth) and the page sweep.html (chart and table) into <store>.sweep/ (or "
                 "--out).")
    p.add_argument("--layers", metavar="L1,L2,...",
                   help="layers to compare (default: the end of each stage of the backbone, "
                   "as featx layers marks them, and its last layer)")
    _add_grid_search(p, f"comma-separated, as for classify: {', '.join(_one_of('classifiers'))} "
                     "(default: the pipeline's)",
                     "each learner's reduced grid and 2 folds")
    p.add_argument("--repeats", type=int, metavar="R",
                   help="score each layer on R stratified splits (seeds dataset.seed ..., as "
                   "classify --repeats): mean ± sd, error bars on the chart")
    p.add_argument("--out", metavar="DIR", help="folder for the table, JSON, plot and page")


def _add_audit(sub: _Subcommands) -> None:
    p = _command(sub, "audit", _common(), help="duplicates, leakage, likely label errors and "
                 "outliers of a cached dataset",
                 description="Read the pipeline's feature store and write audit.html "
                 "(thumbnails) and audit.csv: exact and near duplicates (cross-split pairs: "
                 "leakage; pairs with different labels), likely label errors (out-of-fold "
                 "probabilities, confident learning with cleanlab) and outliers. Needs pip "
                 "install 'featx[audit]'.")
    _add_store(p)
    p.add_argument("--out", help="folder for audit.html and audit.csv (default: beside the "
                   "store, <store>.audit/)")
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine similarity above which two images are near duplicates "
                   "(default 0.95)")
    p.add_argument("--top", type=int, default=None,
                   help="rows per section in the HTML page (default 100)")


def _add_runs(sub: _Subcommands) -> None:
    p = _command(sub, "runs", help="one table of every classification result, best first",
                 description="Find every result JSON (in the run folders under <cache-dir>/"
                 "**/*.runs/ and under the folders given, e.g. --out folders) and print "
                 "when each run started, its name (or short id), dataset, backbone, "
                 "classifier, rank-1 (± its standard deviation over repeated splits) and fit "
                 "seconds in 100 columns (--wide: every column); 'best' marks the best rank-1 "
                 "of each dataset.")
    p.add_argument("dirs", nargs="*", metavar="DIR", help="more folders (or JSON files)")
    _add_cache_dir(p)
    p.add_argument("--wide", action="store_true",
                   help="every column: also layer, pooling, pipeline, rank-5, the classify "
                   "settings, rank-1 by split, the run's name and id")
    p.add_argument("--sort", default="rank1", metavar="COLUMN",
                   help="any column: dataset, backbone, layer, pooling, classifier, pipeline, "
                   "rank1, rank5, fit_seconds, started, quick, class_weight, cv, "
                   "train_features, test_features, name, run (default rank1, best first)")
    p.add_argument("--dataset", help="only the runs on this dataset")
    p.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE",
                   help="only the rows where COLUMN is VALUE (as printed or as recorded), "
                   "e.g. --where classifier=logreg --where quick=no; repeat to narrow")
    p.add_argument("--latest", action="store_true",
                   help="only the newest run (the run folder started last)")
    p.add_argument("--csv", action="store_true", help="CSV instead of the table")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="paired comparison of two runs made with classify.repeats: per "
                   "classifier, the mean of rank-1(A) - rank-1(B) over the splits they share "
                   "and its standard error. A run: a run folder or result file, a run's "
                   "name, a unique prefix of its id or short id, latest, or latest~N (the "
                   "N-th before the newest), among the runs listed")


def _add_demo_data(sub: _Subcommands) -> None:
    p = _command(sub, "demo-data", help="export scikit-learn's digits as PNGs (the demo set)")
    p.add_argument("folder", nargs="?", default="data/digits")


def config_from_args(args: argparse.Namespace) -> Config:
    config = Config.load(args.pipeline, list(args.set))
    for flag, field in SHORTHANDS.items():
        value = getattr(args, flag, None)
        if value is not None:  # typed by argparse: paths are never parsed as TOML
            config.assign(field, value, "command line")
    return config


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    try:  # console: TensorFlow's start-up lines and other libraries' INFO lines only with -v
        with console(level), warnings.catch_warnings(), results_to(_Output()):
            warnings.showwarning = _show_warning
            return _dispatch(args)
    except FeatxError as e:  # messages quote class names and paths: escaped for a terminal
        print(f"featx: error: {terminal(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # full disk, read-only folder, permissions: name the path
        print(f"featx: error: {terminal(e.strerror or e)}: {terminal(e.filename or '')}",
              file=sys.stderr)
        return 2


class _Output(logging.Handler):
    """The command's output that the library logs (featx.core.log.RESULTS: classify's summary
    lines, sweep's table, fine-tune's result): bare lines on stdout, as each comes."""

    def emit(self, record: logging.LogRecord) -> None:
        print(record.getMessage())  # a closed stdout fails the command, as a print did


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # featx's own warnings are one line, like its errors; others keep Python's format.
    from featx.core.errors import ModelFileWarning

    if issubclass(category, ModelFileWarning):
        print(f"featx: warning: {terminal(message)}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "backbones":
        return _backbones()
    if args.command == "layers":
        return _layers(args)
    if args.command == "demo-data":
        from featx.data.demo import export_digits

        print(export_digits(args.folder))
        return 0
    if args.command == "cache":
        return _cache(args)
    if args.command == "init":
        return _init(args)
    if args.command == "runs":
        return _runs(args)
    if args.command == "predict":
        from featx.learn.predict import run

        return run(args.model, args.inputs, out=sys.stdout, top=args.top, csv_file=args.csv,
                   weights=args.weights, batch_size=args.batch_size, trust=args.trust)
    if args.command == "export-model":
        return _export_model(args)
    if args.command == "explain":
        from featx.inspect.explain import explain

        written = explain(args.model, args.inputs, args.out, top=args.top,
                          classes=args.classes, patch=args.patch, stride=args.stride,
                          neighbours=args.neighbours,
                          store=_store_file(args.store, Config().cache_path),
                          weights=args.weights, trust=args.trust, maps=args.maps or "",
                          maps_top=args.maps_top)
        print(f"wrote {written[-1]} ({plural(len(written) - 1, 'PNG')})")
        return 0
    config = config_from_args(args)
    if args.command == "audit":
        from featx.inspect.audit import run_audit

        written = run_audit(config, _store_file(args.store, config.cache_path), args.out,
                            threshold=args.threshold, top=args.top)
        for path in written:
            print(f"wrote {path}")
        return 0
    if args.command == "extract":
        from featx.features.extraction import extract_all

        for r in extract_all(config, progress=not args.no_progress):
            if r.cache_hit:
                print(f"featx: cache hit: {r.path} ({plural(r.rows, 'row')}, no model work)")
            else:
                # the rate is steady-state (after the first batch): one batch has none
                rate = f"{r.images_per_second:.1f} img/s" if r.images_per_second > 0 else \
                    "too few images to time"
                print(f"featx: extracted {plural(r.extracted, 'image')} in {r.seconds:.1f}s "
                      f"({rate} on {r.device or 'no device'}); "
                      f"{r.reused} reused, {r.extracted} added, "
                      f"{r.dropped} dropped, {len(r.skipped)} skipped -> {r.path}")
                for path, reason in r.skipped[:10]:
                    print(f"  skipped {terminal(path)}: {terminal(reason)}")
                if len(r.skipped) > 10:
                    print(f"  ... and {len(r.skipped) - 10} more (featx cache info {r.key})")
            if len(r.duplicate_rows):
                row, earlier = r.duplicate_rows[0]
                print(f"featx: {plural(len(r.duplicate_rows), 'image')} with the same bytes as "
                      f"another image, e.g. {terminal(r.row_paths[row])} = "
                      f"{terminal(r.row_paths[earlier])} (featx cache info {r.key} lists them)")
        return 0
    if args.command == "classify":
        from featx.api import run_classify

        run_classify(config, _store_file(args.store, config.cache_path))
        return 0
    if args.command == "sweep":
        from featx.features.plan import settle
        from featx.inspect.sweep import sweep

        layers = [n.strip() for n in (args.layers or "").split(",") if n.strip()]
        # only the data given: the backbone of the one store of it (sweep reads its own layers)
        sweep(settle(config, ignore=("backbone.layer",)), layers or None, args.out,
              progress=not args.no_progress)
        return 0
    if args.command == "finetune":
        from featx.learn.finetune import finetune

        finetune(config, progress=not args.no_progress)
        return 0
    raise AssertionError(args.command)


def _store_file(given: str | None, cache_dir: Any) -> Any:
    """``--store``: a store file, or a key as featx cache ls lists it (None: none given)."""
    if not given:
        return None
    from featx.features.plan import store_file

    return store_file(given, cache_dir)


def _export_model(args: argparse.Namespace) -> int:
    from featx.learn.deploy import TIMED_RUNS, export_model

    done = export_model(args.model, args.format, args.out, int8=args.int8,
                        weights=args.weights, trust=args.trust)
    meta = done.metadata
    size = meta["input"]["shape"][1]
    print(f"wrote {terminal(done.path)} ({done.format}{' int8' if done.int8 else ''}, "
          f"{done.bytes / 1e6:.1f} MB): {plural(len(done.labels), 'class', 'classes')}, "
          f"input uint8 (N, {size}, {size}, 3) resized with {meta['input']['resize']}, "
          f"output {meta['scores'].split(' (')[0]}")
    if done.int8:
        speed = "not timed here" if done.ms_per_image is None else (
            f"{done.ms_per_image:.1f} ms an image (batch 1, median of {TIMED_RUNS} runs, "
            "this CPU)")
        print(f"int8: {done.bytes / 1e6:.1f} MB against {done.float_bytes / 1e6:.1f} MB of "
              f"float32 weights; {speed}")
    return 0


def _backbones() -> int:
    from featx.features.backbones import REGISTRY
    from featx.features.hub import INSTALL_HINT, kagglehub_cache, listing

    for spec in REGISTRY.values():
        print(f"{spec.name:<20} input {spec.input_size:>3}  preprocess {spec.preprocess}")
    rows = listing()
    if not rows:
        print(f"hub:<preset>: KerasHub's DINOv2/v3, ViT, CLIP, SigLIP and EfficientNet "
              f"backbones need KerasHub: {INSTALL_HINT}")
        return 0
    print("\nKerasHub (hub:<preset>, or hub:/path/to/a/preset/folder; input px, feature width):")
    for r in rows:
        print(f"{r.name:<42} input {r.input_size:>3}  width {r.width:>4}  {r.family:<12} "
              f"{r.params / 1e6:>6.1f}M params")
    if any("?" in (r.input_size, r.width) for r in rows):
        print(f"?: read from the preset's config, which KerasHub downloads with its weights "
              f"(into {kagglehub_cache()}); a CNN's width is known once it is built")
    return 0


def _layers(args: argparse.Namespace) -> int:
    from featx.inspect import visualize

    drawing = args.filters or args.visualize
    weights = args.weights or (None if drawing else "none")
    if args.steps is not None and not args.visualize:
        raise UsageError("--steps goes with --visualize")
    backbone = visualize.backbone_for(args.name, weights, args.input_size)
    if not drawing:
        ends = set(backbone.stage_ends())
        for name, shape in backbone.listed_layers():
            mark = "  stage end" if name in ends else ""
            print(f"{name:<40} {shape}{mark}")
        return 0
    if args.filters:
        print(f"wrote {visualize.draw_filters(backbone, args.out)}")
    if args.visualize:
        steps = visualize.STEPS if args.steps is None else args.steps
        path, v = visualize.draw_channels(backbone, args.visualize, args.out, steps, args.seed)
        for c, a0, a1 in zip(v.channels, v.start, v.final):
            print(f"{v.layer} channel {c}: mean activation {a0:.4g} on the noise -> "
                  f"{a1:.4g} after {plural(steps, 'step')}")
        print(f"wrote {path} ({v.seconds:.1f}s)")
    return 0


def _runs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from featx.report import runs

    folder = Config(cache_dir=args.cache_dir or "").cache_path
    if args.compare:
        # the cache is read only for references that are not paths (names, ids, latest)
        listed = [] if all(Path(a).exists() for a in args.compare) else \
            runs.collect(folder, args.dirs, args.dataset, args.where)
        a, b = (runs.resolve(ref, listed) for ref in args.compare)
        pairs = runs.compare(a, b)
        print(runs.comparison_table(pairs))
        print(f"{plural(len(pairs), 'pair')}: A = {terminal(a)}, B = {terminal(b)}",
              file=sys.stderr)
        return 0
    rows = runs.collect(folder, args.dirs, args.dataset, args.where, args.latest, args.sort)
    if args.csv:
        print(runs.to_csv(rows), end="")
    else:
        print(runs.table(rows) if args.wide else runs.brief_table(rows))
        print(f"{plural(len(rows), 'result')} from "
              f"{plural(runs.count_runs(rows), 'run')}", file=sys.stderr)
    return 0


def _cache(args: argparse.Namespace) -> int:
    import json

    from featx.store import cache

    folder = Config(cache_dir=args.cache_dir or "").cache_path
    if args.cache_command == "ls":
        rows = cache.entries(folder)
        # a checkpoint's rows: the epochs it has finished; "-": not recorded
        cells = [[terminal(c) or "-" for c in (
            e.dataset, e.backbone, e.layer, e.pooling, str(e.input_size or ""), e.weights,
            str(e.rows), f"{e.bytes / 1e6:.1f}", e.state, e.key)] for e in rows]
        for line in _ls_table(cells):
            print(line)
        print(f"{plural(len(rows), 'entry', 'entries')} in {folder}")
        return 0
    if args.cache_command == "info":
        entry = cache.find(folder, args.key)
        print(json.dumps({"path": str(entry.path), **cache.info(entry.path)}, indent=2,
                         default=str))
        return 0
    if args.cache_command == "verify":
        checked = ("store", "partial", "openvino")
        # a killed conversion's temporary folder is no model: only named ones are checked
        targets = [cache.find(folder, k) for k in args.keys] or [
            e for e in cache.entries(folder)
            if e.kind in checked and (e.complete or e.kind != "openvino")]
        bad = 0
        for e in targets:
            if e.kind not in checked:
                print(f"skip {e.path.name}: {e.state}, not a feature store or converted model")
                continue
            problems = cache.verify(e.path) if e.complete else [
                "unfinished conversion" if e.kind == "openvino" else "unfinished extraction"]
            bad += bool(problems)
            print(f"{'OK  ' if not problems else 'FAIL'} {e.path.name}"
                  + "".join(f"\n     {p}" for p in problems))
        return 1 if bad else 0
    if args.cache_command == "export":
        from pathlib import Path

        from featx.store.export import export

        store = Path(args.store)
        path = store if store.suffix == ".h5" else cache.find(folder, args.store).path
        for written in export(path, args.format, args.out):
            print(f"wrote {written}")
        return 0
    if args.cache_command == "rm":
        if args.all == bool(args.keys):
            raise StoreError("featx cache rm takes whole keys or --all (not both, not neither)")
        # every key is checked before anything is removed
        targets = cache.entries(folder) if args.all else \
            [cache.find(folder, key, exact=True) for key in args.keys]
        _say_results_go(targets)
        for entry in targets:
            for path in cache.remove(entry):
                print(f"removed {path}")
        return 0
    raise AssertionError(args.cache_command)


_LS_COLUMNS = ("dataset", "backbone", "layer", "pooling", "px", "weights", "rows", "MB",
               "state", "key")


def _ls_table(cells: list[list[str]], width: int = 100) -> list[str]:
    """``featx cache ls``'s lines in ``width`` columns: the longest of dataset, backbone,
    layer and weights cut in the middle first, down to a floor each (a backbone's name stays
    whole: MobileNetV2, EfficientNetV2S); the state, numbers and keys (``cache rm`` takes
    whole keys) never: a long key (a killed conversion's folder) widens the table instead."""
    from featx.report.runs import shorten

    rows = [list(_LS_COLUMNS), *cells]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_LS_COLUMNS))]
    floor = {0: 8, 1: 15, 2: 8, 5: 8}  # dataset, backbone, layer, weights
    while sum(widths) + len(widths) - 1 > width:
        cuttable = [j for j in floor if widths[j] > floor[j]]
        if not cuttable:
            break
        widths[max(cuttable, key=lambda j: widths[j])] -= 1
    right = {4, 6, 7}
    return [" ".join(shorten(c, w).rjust(w) if i in right else shorten(c, w).ljust(w)
                     for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]


def _say_results_go(targets: list) -> None:
    # Removing a store removes its run folders, results and saved models included: said
    # before anything goes, not only in --help.
    from featx.core.layout import runs_dir

    folders = [f for f in (runs_dir(e.path) for e in targets if e.kind == "store")
               if f.is_dir()]
    results = [p for f in folders for p in f.rglob("*.json")]
    models = [p for f in folders for p in f.rglob("*.skops")]
    if folders:
        print(f"featx: also removing the stores' results: {plural(len(results), 'result')} "
              f"and {plural(len(models), 'saved model')} in "
              f"{', '.join(terminal(f) for f in folders)}")

if __name__ == "__main__":
    sys.exit(main())
