"""Which CPU the bench judged: its model, cores and int8-relevant instruction-set features.

Read from ``/proc/cpuinfo`` by pure functions over its text (unit-tested on
real texts in ``tests/data/cpuinfo/``). The features that matter for the
int8 embedder:

* x86: ``avx2`` (and ``fma``), the AVX-512 base (``avx512f``, ``avx512bw``),
  and the **int8 dot-product** instructions: ``avx512_vnni`` (AVX-512 VNNI),
  ``avx_vnni`` (the 256-bit VEX form) and AMX (``amx_tile``, ``amx_int8``).
* ARM (aarch64): ``asimd`` (NEON), and the int8 dot products ``asimddp``
  (ARMv8.2 SDOT/UDOT, the kernel's name for "dotprod") and ``i8mm``
  (ARMv8.6 int8 matrix multiply), plus ``sve``/``sve2`` where present.

Without a dot-product instruction an int8 multiply-accumulate is done by
widening to 16 bits and multiplying pairs (x86 ``vpmaddubsw``/``vpmaddwd``,
NEON ``smull``/``sadalp``): several instructions where the float path has one
fused multiply-add per lane. So the int8 model's speed-up over float32 is a
property of the CPU as much as of the model, which is why the bench judges
that target only where the CPU has a dot product (:func:`int8_dot_reason`).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")

X86_FEATURES = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
)
X86_INT8_DOT = ("avx512_vnni", "avx_vnni", "amx_int8")
ARM_FEATURES = ("asimd", "asimddp", "i8mm", "sve", "sve2")
ARM_INT8_DOT = ("asimddp", "i8mm")

# Arm Ltd's (implementer 0x41) part numbers of the cores a door device may have.
ARM_PARTS = {
    "0xd03": "Cortex-A53",
    "0xd04": "Cortex-A35",
    "0xd05": "Cortex-A55",
    "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72",
    "0xd09": "Cortex-A73",
    "0xd0a": "Cortex-A75",
    "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1",
    "0xd0d": "Cortex-A77",
    "0xd40": "Neoverse-V1",
    "0xd41": "Cortex-A78",
    "0xd46": "Cortex-A510",
    "0xd47": "Cortex-A710",
    "0xd49": "Neoverse-N2",
    "0xd4f": "Neoverse-V2",
}


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as ``/proc/cpuinfo`` describes it (only what the bench reports).

    ``features`` are the int8-relevant ones present, in the order of
    :data:`X86_FEATURES` or :data:`ARM_FEATURES`; ``int8_dot`` the dot-product
    ones among them; ``checked`` every dot-product feature that was looked for.
    """

    arch: str  # "x86", "arm" or "unknown"
    model: str
    cores: int
    features: tuple[str, ...] = ()
    int8_dot: tuple[str, ...] = ()
    checked: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line: the features and the int8 dot-product verdict."""
        feats = " ".join(self.features) or "none of interest"
        if self.arch == "unknown":
            return f"features unknown ({self.model})"
        if self.int8_dot:
            return f"{feats}; int8 dot product: {', '.join(self.int8_dot)}"
        return f"{feats}; no int8 dot product (none of {', '.join(self.checked)})"


def _blocks(text: str) -> list[dict[str, str]]:
    """The ``key : value`` blocks of a cpuinfo text (one per processor, plus trailers)."""
    out: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if cur:
                out.append(cur)
            cur = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            cur.setdefault(key.strip().lower(), value.strip())
    if cur:
        out.append(cur)
    return out


def _first(blocks: list[dict[str, str]], key: str) -> str:
    return next((b[key] for b in blocks if b.get(key)), "")


def _arm_model(blocks: list[dict[str, str]]) -> str:
    """The board's model line (a Raspberry Pi's ``Model``) and the core's name."""
    part = _first(blocks, "cpu part").lower()
    implementer = _first(blocks, "cpu implementer").lower()
    core = ARM_PARTS.get(part) if implementer == "0x41" else None
    core = core or (f"ARM part {part} (implementer {implementer})" if part else "ARM")
    board = _first(blocks, "model")
    return f"{board} ({core})" if board else core


def parse_cpuinfo(text: str) -> CpuInfo:
    """A :class:`CpuInfo` from the text of ``/proc/cpuinfo`` (x86 or aarch64).

    x86 lists its features on ``flags`` lines and its name on ``model name``;
    aarch64 on ``Features`` lines, with the core given as ``CPU implementer``
    and ``CPU part`` numbers and, on a Raspberry Pi, the board on ``Model``.
    """
    blocks = _blocks(text)
    cores = sum(1 for b in blocks if "processor" in b)
    x86 = set(_first(blocks, "flags").split())
    arm = set(_first(blocks, "features").split())
    if x86:
        feats = tuple(f for f in X86_FEATURES if f in x86)
        dot = tuple(f for f in X86_INT8_DOT if f in x86)
        return CpuInfo("x86", _first(blocks, "model name"), cores, feats, dot, X86_INT8_DOT)
    if arm:
        feats = tuple(f for f in ARM_FEATURES if f in arm)
        dot = tuple(f for f in ARM_INT8_DOT if f in arm)
        return CpuInfo("arm", _arm_model(blocks), cores, feats, dot, ARM_INT8_DOT)
    return CpuInfo("unknown", _first(blocks, "model name") or "no feature list", cores)


def read_cpuinfo(path: Path = CPUINFO) -> CpuInfo:
    """This machine's :class:`CpuInfo` (features unknown where the file cannot be read)."""
    try:
        return parse_cpuinfo(path.read_text(errors="replace"))
    except OSError as e:
        return CpuInfo("unknown", f"{path}: {e.strerror or e}", 0)


def int8_dot_reason(cpu: CpuInfo) -> str | None:
    """Why the int8 speed-up cannot be judged on ``cpu`` (None: it has a dot product)."""
    if cpu.int8_dot:
        return None
    if cpu.arch == "unknown":
        return f"CPU features unknown: {cpu.model}"
    have = ", ".join(cpu.features) or "none of " + ", ".join(
        X86_FEATURES if cpu.arch == "x86" else ARM_FEATURES
    )
    return f"no int8 dot product on this CPU: has {have}; lacks {', '.join(cpu.checked)}"


def xnnpack_build() -> str:
    """What the installed runtime says about its XNNPACK build.

    Neither ``ai_edge_litert`` (2.3) nor ``tflite_runtime`` exposes one: no
    Python attribute and no exported symbol names XNNPACK's version or the
    kernels it picked (it picks them at run time from the CPU's features).
    So this names the runtime versions that carry it.
    """
    versions = []
    for pkg in ("ai-edge-litert", "tflite-runtime"):
        try:
            versions.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            continue
    inside = f" (the one inside {', '.join(versions)})" if versions else ""
    return f"not exposed by the runtime{inside}"
