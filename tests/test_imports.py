"""``import edge`` (every module) needs no camera library, runtime, TensorFlow or broker client."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("tensorflow", "picamera2", "ai_edge_litert", "tflite_runtime", "paho", "cv2", "matplotlib")


def test_importing_every_edge_module_loads_no_backend() -> None:
    code = (
        "import pkgutil, sys, importlib, edge\n"
        "for m in pkgutil.walk_packages(edge.__path__, 'edge.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        f"print(sorted(h for h in {HEAVY!r} if h in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
