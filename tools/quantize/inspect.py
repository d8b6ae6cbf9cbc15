"""Inspection for :mod:`tools.quantize`: a TFLite model's ops, tensors and the Edge TPU compiler.

What the file holds, read back with the runtime (no default delegates, so
ops are listed as written): which ops are not integer-only, the input and
output quantisation the manifest must state, and, when ``edgetpu_compiler``
is installed, how many ops it maps.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.vision.manifest import TensorSpec
from tools.quantize.common import EDGETPU_INSTALL, _tf


@dataclass(frozen=True)
class OpInfo:
    """One operator of a TFLite model and the dtypes of its tensors."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def _plain_interpreter(path: Path) -> Any:
    """A runtime interpreter without default delegates, so ops are listed as in the file."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        it = Interpreter(
            model_path=str(path),
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
    except ImportError:
        tf = _tf()
        it = tf.lite.Interpreter(
            model_path=str(path),
            experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
    it.allocate_tensors()
    return it


def model_ops(path: Path | str) -> list[OpInfo]:
    """Every operator of a TFLite model with its operand/result dtypes."""
    it = _plain_interpreter(Path(path))
    out = []
    for op in it._get_ops_details():
        ins = tuple(np.dtype(t).name for t in op.get("operand_types", []))
        outs = tuple(np.dtype(t).name for t in op.get("result_types", []))
        out.append(OpInfo(str(op["op_name"]), ins, outs))
    return out


def non_int8_ops(ops: Sequence[OpInfo]) -> list[str]:
    """Ops that are not integer-only: any float input/output, or a non-int8 result.

    Biases are int32 in an int8 model (the accumulator type), so int32
    operands are fine; results must be int8.
    """
    bad = []
    for op in ops:
        if any(t.startswith("float") for t in op.inputs + op.outputs) or any(
            t != "int8" for t in op.outputs
        ):
            bad.append(f"{op.name}({','.join(op.inputs)}->{','.join(op.outputs)})")
    return bad


def io_specs(path: Path | str) -> tuple[TensorSpec, TensorSpec]:
    """The input and output tensor specs (shape, dtype, scale, zero-point) of a model."""
    it = _plain_interpreter(Path(path))
    specs = []
    for d in (it.get_input_details()[0], it.get_output_details()[0]):
        scale, zp = d.get("quantization", (0.0, 0))
        dtype = np.dtype(d["dtype"]).name
        q = dtype != "float32"
        specs.append(
            TensorSpec(
                tuple(int(s) for s in d["shape"]),
                dtype,
                float(scale) if q else 0.0,
                int(zp) if q else 0,
            )
        )
    return specs[0], specs[1]


def edgetpu_compile(model: Path, out_dir: Path) -> dict[str, Any]:
    """Run ``edgetpu_compiler`` when installed; count the ops it mapped to the TPU."""
    exe = shutil.which("edgetpu_compiler")
    if exe is None:
        return {"available": False, "message": EDGETPU_INSTALL}
    try:
        proc = subprocess.run(
            [exe, "-s", "-o", str(out_dir), str(model)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"available": True, "ok": False, "message": f"edgetpu_compiler failed: {e}"}
    mapped = total = 0
    for line in proc.stdout.splitlines():
        parts = line.split()
        # Table rows: "<OP> <count> <status words...>"
        if len(parts) >= 3 and parts[1].isdigit() and parts[0].isupper():
            total += int(parts[1])
            if "Mapped to Edge TPU" in line:
                mapped += int(parts[1])
    return {
        "available": True,
        "ok": proc.returncode == 0,
        "ops_mapped": mapped,
        "ops_total": total,
        "message": (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""],
    }
