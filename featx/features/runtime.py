"""Who runs the frozen forward pass: TensorFlow, or OpenVINO on CPUs (optional).

TensorFlow always builds the model, loads the weights and defines the preprocessing
(featx/features/backbones.py). With ``backbone.runtime = "openvino"`` that very function
(uint8 batch -> preprocessing -> model -> pooling -> flip averaging, one fixed batch shape) is
converted once by OpenVINO, kept in the cache folder (featx/core/layout.py:
``openvino/<backbone>-b<batch>-<key>/``) and run by OpenVINO's CPU plugin in float32.

Measured here (2-core AMD EPYC, AVX-512 with bf16, shared with other jobs; MobileNetV2 with
the ImageNet weights, 224 px, batch 32, all 1,360 Flowers-17 images): the features differ
from TensorFlow's by at most 1.02e-5 of their largest value (benchmarks/openvino_agreement.py;
tests hold it to 3e-5), so the store's key leaves the runtime out: a store made by either
runtime serves both. Every converted model is checked against the SHA-256 of its files
(``sha256.json``, written with it) whenever it is read: a damaged one is converted again. Left
to itself, OpenVINO computes in bfloat16 on such a CPU (2.4x TensorFlow's speed, but features
off by 7% of their largest value): featx asks for float32 explicitly.

A backbone OpenVINO cannot convert runs with TensorFlow after one warning line naming it
(:func:`or_tensorflow`). Every family of KerasHub backbones featx reads (featx/features/hub.py)
converted in its tests; the fallback is for those that will not.

``backbone.precision = "int8"`` runs that float32 model quantised by NNCF's post-training
quantisation (:func:`quantize`), calibrated on a seeded sample of the dataset's own images
(:func:`calibration_sample`) and cached beside it (``openvino/<backbone>-int8-b<batch>-<key>/``,
checked the same way). Its features are not float32's (up to a fraction of the largest
value), so the store's key holds the precision and the calibration's identity (how many
images, the seed, a digest of their paths and signatures): an int8 store is never a cache hit
for a float32 one, nor the reverse, and nothing falls back to TensorFlow.

``openvino`` and ``nncf`` are imported only here and only when used: optional dependencies.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featx.core.config import RUNTIMES
from featx.core.errors import BackboneError
from featx.core.files import checksum_problems, installed_version, short_hash, write_checksums
from featx.core.layout import (
    OPENVINO_DIR,
    converted_model_checksums,
    converted_model_dir,
    converted_model_file,
    safe_name,
)
from featx.core.log import _quiet, _stderr_fd_silenced, plural
from featx.data.dataset import Dataset
from featx.data.images import ReadErrors, read_batches, usable_cores

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'featx[openvino]'"


def openvino_version() -> str | None:
    """The installed OpenVINO's version (package metadata: nothing imported), or None."""
    if importlib.util.find_spec("openvino") is None:
        return None
    return installed_version("openvino") or "?"


def gpu_in_use() -> bool:
    """Whether TensorFlow sees a GPU (and so would run the backbone there)."""
    from featx.core.log import import_tensorflow

    return bool(import_tensorflow().config.list_physical_devices("GPU"))


def check_runtime(runtime: str, precision: str) -> None:
    """Refuse, before any image is read, a runtime that cannot run as asked."""
    if runtime not in RUNTIMES:
        raise BackboneError(f"unknown runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
    if precision == "int8":
        # no fallback: TensorFlow's features would be float32's under an int8 store's key
        if runtime == "tensorflow":
            raise BackboneError("backbone.precision = \"int8\" runs on OpenVINO: set "
                                "backbone.runtime = \"openvino\" (--runtime openvino) or "
                                "\"auto\"")
        missing = [name for name in ("openvino", "nncf") if importlib.util.find_spec(name) is None]
        if missing:
            raise BackboneError(f"backbone.precision = \"int8\" needs {' and '.join(missing)}, "
                                f"not installed: {INSTALL_HINT}")
        return
    if runtime != "openvino":
        return
    if precision != "float32":
        raise BackboneError(f"backbone.runtime = \"openvino\" runs the float32 or int8 model: "
                            f"backbone.precision = {precision!r} is a GPU setting for "
                            "TensorFlow; use precision \"float32\" or runtime \"tensorflow\"")
    if openvino_version() is None:
        raise BackboneError(f"backbone.runtime = \"openvino\" needs OpenVINO, which is not "
                            f"installed: {INSTALL_HINT} (or use runtime \"auto\", which falls "
                            "back to TensorFlow)")


def resolve_runtime(runtime: str, precision: str,
                    gpu: Callable[[], bool] = gpu_in_use) -> str:
    """``tensorflow`` or ``openvino``: what ``runtime`` means on this machine. ``auto`` is
    OpenVINO when it is installed, the precision is float32 and no GPU is in use, and always
    with precision int8 (which only OpenVINO runs)."""
    check_runtime(runtime, precision)
    if runtime != "auto":
        return runtime
    if precision == "int8":
        return "openvino"
    if openvino_version() is None or precision != "float32" or gpu():
        return "tensorflow"
    return "openvino"


@dataclass(frozen=True)
class ThreadSplit:
    """How decoding and OpenVINO's inference share the cores."""

    cores: int  # usable by this process
    inference_threads: int  # OpenVINO INFERENCE_NUM_THREADS
    streams: int  # OpenVINO NUM_STREAMS (one synchronous request: more streams only idle)
    decode_parallel: int  # decoding threads of featx.data.images.read_batches
    pinning: bool = False  # OpenVINO ENABLE_CPU_PINNING

    def describe(self) -> str:
        return (f"{plural(self.cores, 'usable core')}: OpenVINO "
                f"{plural(self.inference_threads, 'inference thread')}, "
                f"{plural(self.streams, 'stream')}, {'pinned' if self.pinning else 'unpinned'}; "
                f"decoding {self.decode_parallel} in parallel")


def thread_split(cores: int | None = None) -> ThreadSplit:
    """The split for ``cores`` usable cores (default: this process's).

    Inference gets every core and decoding may run on every core too: decoding a batch
    (Pillow, JPEG draft mode) costs a small share of the backbone's time, runs ahead in
    the reader's threads while the backbone works, and OpenVINO's threads do not spin when they
    wait; threads are not pinned to cores (see OpenVINOForward). `make bench` prints it.
    """
    n = max(1, cores or usable_cores())
    return ThreadSplit(cores=n, inference_threads=n, streams=1, decode_parallel=n)


def model_key(described: dict[str, Any], batch_size: int, calibration: str = "") -> str:
    """A short hash of everything that defines a converted model: the backbone's description
    (name, weights identity, layers, pooling, input size, preprocessing, flip; precision
    int8), the batch size and the versions of the libraries that build and convert it; an
    int8 model's also its calibration (:attr:`Calibration.identity`) and NNCF's version."""
    names = ("tensorflow", "keras", "openvino") + (("nncf",) if calibration else ())
    versions = {name: installed_version(name) or "?" for name in names}
    more = {"calibration": calibration} if calibration else {}
    return short_hash(json.dumps({**described, "batch_size": batch_size, "versions": versions,
                                  "precision_hint": "f32", **more}, sort_keys=True))


@dataclass(frozen=True)
class Calibration:
    """The images an int8 model is calibrated on: a seeded sample of a dataset's own."""

    files: tuple[str, ...]  # absolute paths, in the sample's order
    seed: int
    digest: str  # of the sample's relative paths and signatures, in order
    # the identity a cached int8 model records, where its images are not at hand (featx
    # predict on a saved model, :func:`cached_int8_models`): its model is read, never made
    recorded: str = ""

    @property
    def identity(self) -> str:
        """What the store's key and the int8 model's key hold of it."""
        return self.recorded or \
            f"{plural(len(self.files), 'image')}, seed {self.seed}, {self.digest}"


def calibration_sample(dataset: Dataset, signatures: Sequence[str], size: int,
                       seed: int) -> Calibration:
    """The ``size`` images of ``dataset`` (all where it has fewer) whose hash of (``seed``,
    relative path) is smallest, in that order.

    From the whole dataset, not the training split: classify.repeats scores R splits of one
    store, so no one store's calibration can leave out every split's test images, and the
    split may be rewritten after extraction (near-duplicates grouped); calibration reads no
    label and only sets each tensor's quantisation range. By a hash of the path, not by
    position: an added or removed image changes the sample only where it ranks among the
    first ``size`` (``size`` / N of added images do), so an update of a large dataset
    usually keeps the int8 model and the store's key, and reuses the rows it has."""
    paths = dataset.paths
    key = str(seed).encode()[:64]
    rank = np.fromiter((int.from_bytes(hashlib.blake2b(path.encode(), digest_size=8,
                                                       key=key).digest(), "big")
                        for path in paths), np.uint64, len(paths))
    chosen = np.argsort(rank, kind="stable")[:max(0, size)].tolist()
    digest = short_hash(json.dumps([[paths[i], signatures[i]] for i in chosen]))
    return Calibration(tuple(str(dataset.absolute(i)) for i in chosen), seed, digest)


def calibration_batches(calibration: Calibration, size: int, resize: str,
                        batch_size: int) -> list[np.ndarray]:
    """The calibration images as the extraction reads them (``size`` px, ``resize``), in
    full batches of (batch_size, size, size, 3) uint8 (the converted model's one shape: the
    last batch is filled with the first images again rather than with zeros, which would
    widen the ranges). Unreadable files are left out; none readable: a BackboneError."""
    got = [images[ok] for _, images, ok in read_batches(list(calibration.files), size,
                                                        batch_size, ReadErrors(),
                                                        resize=resize)]
    images = np.concatenate(got) if got else np.zeros((0, size, size, 3), np.uint8)
    if not len(images):
        raise BackboneError(f"none of the {plural(len(calibration.files), 'calibration image')}"
                            f" could be read (e.g. {next(iter(calibration.files), '-')}): "
                            "nothing to calibrate the int8 model on")
    batches = -(-len(images) // batch_size)
    images = images[np.arange(batches * batch_size) % len(images)]
    return [images[i:i + batch_size] for i in range(0, len(images), batch_size)]


def quantize(model: Any, batches: list[np.ndarray]) -> Any:
    """OpenVINO model ``model`` quantised to int8 by NNCF on ``batches`` (each one input of
    it): the one place that quantises. Full bias correction, as export-model's int8 does:
    on MobileNetV2 it took the largest feature difference from float32 from 0.29 to 0.15 of
    the largest feature (128 Flowers-17 images) for 10% more time."""
    import nncf

    # NNCF draws progress bars on stdout and stderr: only the command line prints
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _stderr_fd_silenced() if _quiet() else contextlib.nullcontext():
            return nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches),
                                 fast_bias_correction=False)


def convert(function: Any) -> Any:
    """OpenVINO's model of a traced ``tf.function`` (its one input signature): the one place
    that converts (seconds: 3.3 s for MobileNetV2 at 224 px here)."""
    import openvino as ov

    return ov.convert_model(function.get_concrete_function())


def load_or_convert(make_function: Callable[[], Any], cache_dir: Path, name: str,
                    batch_size: int, key: str) -> Any:
    """The converted model from the cache folder, or converted now and saved there (written
    to a temporary folder, then renamed into place: a concurrent run sees all or nothing).
    An unwritable cache folder only costs the conversion again next time."""
    return _cached(converted_model_dir(cache_dir, name, batch_size, key),
                   lambda: convert(make_function()), "converting", f"{name} for OpenVINO")


def load_or_quantize(float_model: Callable[[], Any], batches: Callable[[], list[np.ndarray]],
                     cache_dir: Path, name: str, batch_size: int, key: str,
                     identity: str = "") -> Any:
    """The int8 model from the cache folder, or quantised now (``float_model()``, the
    converted float32 model, on ``batches()``, the calibration images) and kept there, as
    :func:`load_or_convert` keeps a converted one. Whatever fails on the way is a
    BackboneError: an int8 store is never filled by another runtime. The model records
    ``identity`` (its calibration's): the key is a hash, and featx predict finds a saved
    model's int8 model without its dataset by it (:func:`cached_int8_models`)."""
    folder = converted_model_dir(cache_dir, name, batch_size, key, precision="int8")

    def make() -> Any:
        model = quantize(float_model(), batches())
        model.set_rt_info(identity, list(CALIBRATION_INFO))
        return model

    try:
        return _cached(folder, make, "quantising", f"{name} to int8 (NNCF)")
    except BackboneError:
        raise
    except Exception as e:  # the converter's and NNCF's own kinds
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise BackboneError(f"cannot make the int8 OpenVINO model of {name} ({reason}); "
                            "backbone.precision = \"float32\" runs it unquantised") from e


CALIBRATION_INFO = ("featx", "calibration")  # where an int8 model records its calibration


def cached_int8_models(cache_dir: Path, name: str) -> list[tuple[Path, int, str]]:
    """(folder, batch size, calibration identity) of each int8 model of backbone ``name``
    kept in ``cache_dir`` whose files pass their checksums and that records its calibration
    (:func:`load_or_quantize`); read, not compiled."""
    import openvino as ov

    prefix = safe_name(name) + "-int8-b"
    found = []
    for folder in sorted((Path(cache_dir) / OPENVINO_DIR).glob(f"{glob.escape(prefix)}*")):
        size = folder.name[len(prefix):].split("-")[0]
        if not size.isdigit() or checksum_problems(folder, converted_model_checksums(folder),
                                                   converted_model_file(folder).name):
            continue
        try:
            model = ov.Core().read_model(str(converted_model_file(folder)))
            if model.has_rt_info(list(CALIBRATION_INFO)):
                found.append((folder, int(size),
                              model.get_rt_info(list(CALIBRATION_INFO)).astype(str)))
        except Exception as e:  # unreadable: as good as absent
            log.debug("cannot read %s: %s", folder, e)
    return found


def _cached(folder: Path, make: Callable[[], Any], verb: str, what: str) -> Any:
    """The OpenVINO model kept in ``folder``, or ``make()`` now and kept there (``verb``
    ``what``: what making it does, for the log)."""
    import openvino as ov

    model_file = converted_model_file(folder)
    core = ov.Core()
    if folder.is_dir():
        # checked at every read: hashing MobileNetV2's 14 MB takes milliseconds
        problems = checksum_problems(folder, converted_model_checksums(folder),
                                     converted_model_file(folder).name)
        try:
            if problems:
                raise ValueError("; ".join(problems))
            model = core.read_model(str(model_file))
            log.debug("OpenVINO model read from %s", folder)
            return model
        except Exception as e:  # a damaged file: make it again and replace it
            log.warning("cannot use the converted model %s (%s); %s again", folder, e, verb)
            shutil.rmtree(folder, ignore_errors=True)
    log.info("%s %s (once; kept in %s)", verb, what, folder.parent)
    model = make()
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        ov.save_model(model, str(converted_model_file(tmp)), compress_to_fp16=False)
        write_checksums(tmp, converted_model_checksums(tmp))
        try:
            tmp.rename(folder)
        except OSError:  # another run put it there first: theirs is the same model
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as e:
        log.warning("cannot keep the converted model in %s (%s): %s again on every run",
                    folder.parent, e.strerror or e, verb)
    return model


def or_tensorflow(convert_model: Callable[[], Any], name: str) -> Any:
    """``convert_model()`` (a converted backbone's forward pass), or None where OpenVINO cannot
    convert or compile it, after one warning line naming the backbone: the caller then runs
    it with TensorFlow. A KerasHub transformer may hold an op OpenVINO's TensorFlow frontend
    does not know (featx/features/hub.py); featx's own errors (BackboneError) pass."""
    try:
        return convert_model()
    except BackboneError:
        raise
    except Exception as e:  # the converter raises its own kinds (OpConversionFailure, ...)
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        log.warning("OpenVINO cannot convert %s (%s): running it with TensorFlow", name, reason)
        return None


class OpenVINOForward:
    """``forward(images)``: (batch_size, S, S, 3) uint8 -> the backbone's float32 features
    (batch_size, ...), one synchronous OpenVINO request on the CPU, float32 throughout.

    ``PERFORMANCE_HINT=LATENCY`` and one stream: with one request at a time, THROUGHPUT (two
    streams here) ran at half the speed of LATENCY in the measurement behind issue 15."""

    def __init__(self, model: Any, split: ThreadSplit) -> None:
        import openvino as ov

        self.split = split
        self.compiled = ov.Core().compile_model(model, "CPU", {
            "PERFORMANCE_HINT": "LATENCY",
            # Without it OpenVINO computes in bfloat16 on CPUs that have it (this one): 2.4x
            # faster than float32 but features off by 7% of their largest value.
            "INFERENCE_PRECISION_HINT": "f32",
            "INFERENCE_NUM_THREADS": split.inference_threads,
            "NUM_STREAMS": split.streams,
            # Pinned (its default here), a thread cannot leave a core that decoding or another
            # process holds: 1.18x TensorFlow pinned, 1.37x unpinned (medians of 6 paired
            # samples, MobileNetV2 224 px batch 32, this 2-core machine at load 5).
            "ENABLE_CPU_PINNING": split.pinning,
        })
        self.request = self.compiled.create_infer_request()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        out = self.request.infer([np.ascontiguousarray(images, np.uint8)],
                                 share_inputs=True, share_outputs=False)
        return np.asarray(out[0], np.float32)  # a copy: the request reuses its buffer
