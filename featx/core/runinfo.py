"""What a classify or fine-tune run records about itself, and where: a run folder of its own
(start time plus a short hash of the run's settings), the library versions and the machine
(its files are written atomically: featx.core.files)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from featx.core.files import installed_version, short_hash
from featx.core.layout import safe_name

# The distributions whose versions a run records ("tensorflow" may be installed as -cpu).
DISTRIBUTIONS = {"scikit-learn": ("scikit-learn",), "numpy": ("numpy",), "skops": ("skops",),
                 "tensorflow": ("tensorflow", "tensorflow-cpu"), "h5py": ("h5py",)}


# What a run is called (classify.run_name): recorded with its settings, but not one of them.
NOT_SETTINGS = ("run_name",)


def settings_hash(settings: dict[str, Any]) -> str:
    """8 hex digits naming a set of settings (the same settings, the same digits, whatever
    the run is called)."""
    settings = {k: v for k, v in settings.items() if k not in NOT_SETTINGS}
    return short_hash(json.dumps(settings, sort_keys=True, default=str), 8)


def versions() -> dict[str, str | None]:
    """featx's and the installed libraries' versions (None: not installed)."""
    import featx

    found: dict[str, str | None] = {"featx": featx.__version__}
    for name, distributions in DISTRIBUTIONS.items():
        found[name] = installed_version(*distributions)
    found["python"] = platform.python_version()
    return found


def machine() -> dict[str, Any]:
    """The machine a run ran on: system, CPU model and count, GPUs (names; empty if none)."""
    return {"system": platform.platform(), "cpu": _cpu_model(), "cpus": os.cpu_count(),
            "gpus": _gpus()}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[str]:
    # Without importing TensorFlow (seconds) when this process has not: ask the driver.
    if "tensorflow" in sys.modules:
        tf = sys.modules["tensorflow"]
        return [d.name for d in tf.config.list_physical_devices("GPU")]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


@dataclass
class Run:
    """One ``featx classify`` or ``featx finetune`` run: its own folder under the results
    folder, never reused."""

    dir: Path
    started: datetime
    settings: dict[str, Any]
    section: str = "classify"  # the config section ``settings`` come from, as recorded
    libraries: dict[str, str | None] = field(default_factory=versions)
    host: dict[str, Any] = field(default_factory=machine)
    clock: float = field(default_factory=time.perf_counter)

    @classmethod
    def open(cls, parent: Path, settings: dict[str, Any], section: str = "classify") -> Run:
        """A new folder ``<parent>/<UTC start time>-<settings hash>`` (``-2``, ``-3``... if a
        run with the same settings started in the same second)."""
        started = datetime.now(timezone.utc)
        stem = f"{started:%Y%m%d-%H%M%S}-{settings_hash(settings)}"
        Path(parent).mkdir(parents=True, exist_ok=True)
        for n in range(1, 1000):
            folder = Path(parent) / (stem if n == 1 else f"{stem}-{n}")
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            return cls(folder, started, settings, section)
        raise FileExistsError(f"{parent}: too many runs named {stem}")

    def file(self, name: str) -> Path:
        """``name`` (made of the pipeline's name) as a path in the run folder, never outside
        it: every character but letters, digits and ``-_.`` becomes ``_``."""
        return self.dir / safe_name(name)

    def record(self, result: dict[str, Any], files: list[Path]) -> dict[str, Any]:
        """``result`` with what the run records about itself: start time, seconds since,
        its settings (under its ``section``), versions, machine and the files written for
        it."""
        return {**result, "run": self.dir.name, "started": self.started.isoformat(),
                "duration_seconds": time.perf_counter() - self.clock,
                self.section: self.settings, "versions": self.libraries, "machine": self.host,
                "files": [str(p) for p in files]}
