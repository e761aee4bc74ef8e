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

``openvino`` is imported only here and only when used: it is an optional dependency.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featx.core.config import RUNTIMES
from featx.core.errors import BackboneError
from featx.core.files import checksum_problems, installed_version, short_hash, write_checksums
from featx.core.layout import converted_model_checksums, converted_model_dir, converted_model_file
from featx.core.log import plural
from featx.data.images import usable_cores

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
    if runtime != "openvino":
        return
    if precision != "float32":
        raise BackboneError(f"backbone.runtime = \"openvino\" runs the float32 model: "
                            f"backbone.precision = {precision!r} is a GPU setting for "
                            "TensorFlow; use precision \"float32\" or runtime \"tensorflow\"")
    if openvino_version() is None:
        raise BackboneError(f"backbone.runtime = \"openvino\" needs OpenVINO, which is not "
                            f"installed: {INSTALL_HINT} (or use runtime \"auto\", which falls "
                            "back to TensorFlow)")


def resolve_runtime(runtime: str, precision: str,
                    gpu: Callable[[], bool] = gpu_in_use) -> str:
    """``tensorflow`` or ``openvino``: what ``runtime`` means on this machine. ``auto`` is
    OpenVINO when it is installed, the precision is float32 and no GPU is in use."""
    check_runtime(runtime, precision)
    if runtime != "auto":
        return runtime
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


def model_key(described: dict[str, Any], batch_size: int) -> str:
    """A short hash of everything that defines a converted model: the backbone's description
    (name, weights identity, layers, pooling, input size, preprocessing, flip), the batch size
    and the versions of the libraries that build and convert it."""
    versions = {name: installed_version(name) or "?"
                for name in ("tensorflow", "keras", "openvino")}
    return short_hash(json.dumps({**described, "batch_size": batch_size, "versions": versions,
                                  "precision_hint": "f32"}, sort_keys=True))


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
    import openvino as ov

    folder = converted_model_dir(cache_dir, name, batch_size, key)
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
        except Exception as e:  # a damaged file: convert again and replace it
            log.warning("cannot use the converted model %s (%s); converting again", folder, e)
            shutil.rmtree(folder, ignore_errors=True)
    log.info("converting %s for OpenVINO (once; kept in %s)", name, folder.parent)
    model = convert(make_function())
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
        log.warning("cannot keep the converted model in %s (%s): it is converted again on "
                    "every run", folder.parent, e.strerror or e)
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
