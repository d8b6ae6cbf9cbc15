"""What the numbers were measured on: CPU (with its int8 features), Python, OS, packages."""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import asdict
from importlib import metadata
from typing import Any

from tools.bench.cpu import CpuInfo, int8_dot_reason, read_cpuinfo, xnnpack_build

PACKAGES = (
    "ai-edge-litert",
    "tflite-runtime",
    "numpy",
    "opencv-python-headless",
    "dlib-bin",
    "dlib",
    "face-recognition",
)


def machine(cpu: CpuInfo | None = None) -> dict[str, Any]:
    """The machine's description for the report (``cpu`` read from /proc/cpuinfo if not given).

    ``cpu`` is the model name as before; ``cpu_features`` adds the
    int8-relevant features, whether the int8 speed-up is judged on it and why
    not; ``cores`` is what this process may use.
    """
    cpu = cpu or read_cpuinfo()
    why = int8_dot_reason(cpu)
    info: dict[str, Any] = {
        "cpu": cpu.model or platform.processor() or platform.machine(),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "os": platform.platform(),
        "cpu_features": {**asdict(cpu), "int8_speedup_judged": why is None, "reason": why},
        "xnnpack": xnnpack_build(),
    }
    for pkg in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            info[pkg] = metadata.version(pkg)
    return info
