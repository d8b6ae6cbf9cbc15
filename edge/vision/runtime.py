"""One interpreter wrapper over the TFLite runtimes.

``ai_edge_litert`` (LiteRT, numpy 1 or 2, preferred) or ``tflite_runtime``
(2.14: numpy<2, Python <= 3.11), whichever is installed, or the one the
config forces. The Edge TPU delegate (``libedgetpu.so.1``) is optional: when
it cannot be loaded we log one line and fall back to the CPU.

Runtimes are imported here, lazily, never at ``import edge``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import numpy.typing as npt

from edge.errors import ModelError, RuntimeUnavailable

log = logging.getLogger(__name__)

RUNTIMES = ("ai_edge_litert", "tflite_runtime")
EDGETPU_LIB = "libedgetpu.so.1"


class TensorRunner(Protocol):
    """What the detector and embedder need from an interpreter."""

    input_details: list[dict[str, Any]]
    output_details: list[dict[str, Any]]

    def run(self, x: npt.NDArray[Any]) -> list[npt.NDArray[Any]]: ...


def _import_runtime(name: str) -> tuple[Any, Any]:
    """Return (Interpreter class, load_delegate) for a runtime name."""
    if name == "ai_edge_litert":
        from ai_edge_litert.interpreter import Interpreter, load_delegate

        return Interpreter, load_delegate
    if name == "tflite_runtime":
        from tflite_runtime.interpreter import Interpreter, load_delegate

        return Interpreter, load_delegate
    raise RuntimeUnavailable(f"unknown runtime {name!r} (choose: auto, {', '.join(RUNTIMES)})")


def available_runtimes() -> list[str]:
    """Runtimes that import on this machine, in order of preference."""
    found = []
    for name in RUNTIMES:
        try:
            _import_runtime(name)
        except ImportError:
            continue
        found.append(name)
    return found


def resolve_runtime(runtime: str = "auto") -> str:
    """The runtime to use: the forced one, or the first installed one."""
    if runtime != "auto":
        try:
            _import_runtime(runtime)
        except ImportError as e:
            raise RuntimeUnavailable(f"runtime {runtime!r} is not installed ({e})") from None
        return runtime
    found = available_runtimes()
    if not found:
        raise RuntimeUnavailable(
            "no TFLite runtime installed: pip install ai-edge-litert (or tflite-runtime)"
        )
    return found[0]


class Interpreter:
    """A loaded TFLite model that runs one input tensor to its outputs."""

    def __init__(
        self,
        model_path: Path | str,
        runtime: str = "auto",
        num_threads: int = 2,
        edgetpu: bool = False,
    ) -> None:
        self.model_path = Path(model_path)
        self.runtime = resolve_runtime(runtime)
        interp_cls, load_delegate = _import_runtime(self.runtime)
        delegates = []
        self.edgetpu = False
        if edgetpu:
            try:
                delegates.append(load_delegate(EDGETPU_LIB))
                self.edgetpu = True
            except (OSError, ValueError, RuntimeError) as e:
                log.warning("Edge TPU delegate unavailable (%s); running on the CPU", e)
        try:
            self._interp = interp_cls(
                model_path=str(self.model_path),
                num_threads=num_threads,
                experimental_delegates=delegates or None,
            )
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"{self.model_path}: cannot load model ({e})") from None
        self.input_details: list[dict[str, Any]] = self._interp.get_input_details()
        self.output_details: list[dict[str, Any]] = self._interp.get_output_details()
        self._in_index = self.input_details[0]["index"]
        self._out_indices = [d["index"] for d in self.output_details]

    def run(self, x: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
        """Set the (single) input, invoke, and return copies of all outputs.

        ``get_tensor`` already returns a copy in both runtimes (documented as
        such), owned by the caller and safe across the next ``invoke``.
        """
        self._interp.set_tensor(self._in_index, x)
        self._interp.invoke()
        return [self._interp.get_tensor(i) for i in self._out_indices]

    def ops(self) -> list[str]:
        """Operator names in the model, when the runtime can list them."""
        try:
            return [str(op["op_name"]) for op in self._interp._get_ops_details()]
        except AttributeError:
            return []


def load_interpreter(
    model_path: Path | str, runtime: str = "auto", num_threads: int = 2, edgetpu: bool = False
) -> Interpreter:
    """Load a TFLite model with the chosen runtime (see :class:`Interpreter`)."""
    return Interpreter(model_path, runtime=runtime, num_threads=num_threads, edgetpu=edgetpu)
