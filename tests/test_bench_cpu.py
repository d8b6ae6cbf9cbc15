"""The bench names the CPU it judged and judges int8 only where int8 is meant to win.

The feature detection reads real ``/proc/cpuinfo`` texts (``tests/data/cpuinfo``:
x86 with and without VNNI, a Raspberry Pi 5 and a Pi 4); the verdicts are
checked on given numbers. Nothing here times anything.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tools.bench import (
    CpuInfo,
    FaceSample,
    StageContext,
    StageResult,
    all_pass,
    evaluate_targets,
    format_targets,
    int8_dot_reason,
    machine,
    not_judged_here,
    parse_cpuinfo,
    read_cpuinfo,
    stage_table,
)
from tools.bench.report import cpu_lines

DATA = Path(__file__).resolve().parent / "data" / "cpuinfo"
# Every target met (as in test_bench.py); each test changes what it looks at.
GOOD_VALUES = {
    "int8_speedup": 3.5,
    "int8_size_ratio": 0.26,
    "fps_vs_peer": 24.0,
    "id_vs_peer": 4.0,
    "overhead": 1.19,
    "match_1000_ms": 0.13,
    "daemon_rss_mb": 134.0,
    "rss_growth_pct": 0.3,
    "thread_growth": 0.0,
    "event_p95_ms": 110.0,
    "fleet_p95_20_s": 0.4,
    "fleet_p95_100_s": 1.1,
    "liveness_ms": 6.0,
}


def cpu(name: str) -> CpuInfo:
    return parse_cpuinfo((DATA / name).read_text())


def test_x86_with_vnni_and_amx() -> None:
    c = cpu("x86_xeon_vnni_amx.txt")
    assert (c.arch, c.model, c.cores) == ("x86", "Intel(R) Xeon(R) Processor", 2)
    assert c.features == (
        "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8",
    )  # fmt: skip
    assert c.int8_dot == ("avx512_vnni", "avx_vnni", "amx_int8")
    assert int8_dot_reason(c) is None


def test_amd_epyc_zen4_has_avx512_vnni_only() -> None:
    c = cpu("x86_epyc_zen4_vnni.txt")
    assert (c.arch, c.model, c.cores) == ("x86", "AMD EPYC 9B14", 2)
    assert c.int8_dot == ("avx512_vnni",)
    assert "avx_vnni" not in c.features and "amx_int8" not in c.features
    assert int8_dot_reason(c) is None


def test_amd_epyc_zen3_is_avx2_only() -> None:
    c = cpu("x86_epyc_zen3_avx2.txt")
    assert (c.arch, c.model, c.cores) == ("x86", "AMD EPYC 7B13", 2)
    assert c.features == ("avx2", "fma")
    assert c.int8_dot == ()
    why = int8_dot_reason(c)
    assert why == (
        "no int8 dot product on this CPU: has avx2, fma; lacks avx512_vnni, avx_vnni, amx_int8"
    )


def test_raspberry_pi_5_has_the_arm_dot_product() -> None:
    c = cpu("aarch64_pi5_cortex_a76.txt")
    assert c.arch == "arm" and c.cores == 4
    assert c.model == "Raspberry Pi 5 Model B Rev 1.0 (Cortex-A76)"
    assert c.features == ("asimd", "asimddp")
    assert c.int8_dot == ("asimddp",)
    assert int8_dot_reason(c) is None


def test_raspberry_pi_4_has_no_dot_product() -> None:
    c = cpu("aarch64_pi4_cortex_a72.txt")
    assert c.arch == "arm" and c.cores == 4
    assert c.model == "Raspberry Pi 4 Model B Rev 1.4 (Cortex-A72)"
    assert c.features == ("asimd",) and c.int8_dot == ()
    assert int8_dot_reason(c) == "no int8 dot product on this CPU: has asimd; lacks asimddp, i8mm"


def test_an_arm_server_without_a_board_line_is_named_by_its_core() -> None:
    text = "processor\t: 0\nFeatures\t: fp asimd asimddp i8mm sve\nCPU implementer\t: 0x41\n"
    text += "CPU part\t: 0xd4f\n"
    c = parse_cpuinfo(text)
    assert c.model == "Neoverse-V2" and c.int8_dot == ("asimddp", "i8mm")
    odd = parse_cpuinfo("processor\t: 0\nFeatures\t: fp asimd\nCPU implementer\t: 0x61\n")
    assert odd.model == "ARM" and odd.int8_dot == ()


def test_unknown_cpu_is_not_judged_and_says_why(tmp_path: Path) -> None:
    c = read_cpuinfo(tmp_path / "no-cpuinfo")
    assert c.arch == "unknown"
    why = int8_dot_reason(c)
    assert why is not None and why.startswith("CPU features unknown: ")
    assert parse_cpuinfo("").arch == "unknown"


def verdicts(name: str, speedup: float, **more: float) -> dict[str, tuple[str, str]]:
    targets = evaluate_targets(
        {**GOOD_VALUES, "int8_speedup": speedup, **more}, {}, not_judged_here(cpu(name))
    )
    return {t.key: (t.status, t.note) for t in targets}


@pytest.mark.parametrize(
    "name", ["x86_xeon_vnni_amx.txt", "x86_epyc_zen4_vnni.txt", "aarch64_pi5_cortex_a76.txt"]
)
def test_the_int8_speed_up_is_judged_where_the_cpu_has_a_dot_product(name: str) -> None:
    assert verdicts(name, 1.23)["int8_speedup"] == ("fail", "")
    assert verdicts(name, 2.21)["int8_speedup"] == ("pass", "")


@pytest.mark.parametrize("name", ["x86_epyc_zen3_avx2.txt", "aarch64_pi4_cortex_a72.txt"])
def test_without_a_dot_product_the_speed_up_is_na_and_everything_else_judged(name: str) -> None:
    v = verdicts(name, 1.23, fps_vs_peer=9.0)
    status, note = v["int8_speedup"]
    assert status == "n/a" and note.startswith("no int8 dot product on this CPU: ")
    assert v["fps_vs_peer"][0] == "fail"  # judged on every host
    assert all(s == "pass" for k, (s, _) in v.items() if k not in ("int8_speedup", "fps_vs_peer"))


def test_the_measured_ratio_is_still_printed_with_its_reason() -> None:
    zen3 = cpu("x86_epyc_zen3_avx2.txt")
    targets = evaluate_targets({**GOOD_VALUES, "int8_speedup": 1.23}, {}, not_judged_here(zen3))
    assert all_pass(targets)
    t = next(t for t in targets if t.key == "int8_speedup")
    assert t.value == 1.23 and not t.judged
    row = next(ln for ln in format_targets(targets).splitlines() if ln.startswith("int8 embedder"))
    assert "1.23 x" in row and ">= 1.40 x" in row
    assert row.endswith(f"n/a ({int8_dot_reason(zen3)})")


def test_int8_slower_than_float_is_said_even_where_not_judged() -> None:
    zen3 = cpu("x86_epyc_zen3_avx2.txt")
    notes = {"int8_speedup": "int8 slower than float32 with ai_edge_litert, t=1"}
    targets = evaluate_targets({**GOOD_VALUES, "int8_speedup": 0.8}, notes, not_judged_here(zen3))
    t = next(t for t in targets if t.key == "int8_speedup")
    assert t.status == "n/a"
    assert t.note == f"{int8_dot_reason(zen3)}; int8 slower than float32 with ai_edge_litert, t=1"
    pi5 = cpu("aarch64_pi5_cortex_a76.txt")
    judged = evaluate_targets({**GOOD_VALUES, "int8_speedup": 0.8}, notes, not_judged_here(pi5))
    assert next(t for t in judged if t.key == "int8_speedup").status == "fail"


def test_the_report_header_and_json_name_the_features() -> None:
    zen3, pi5 = cpu("x86_epyc_zen3_avx2.txt"), cpu("aarch64_pi5_cortex_a76.txt")
    head = cpu_lines(zen3, "not exposed")
    assert head[0] == (
        "cpu: x86: avx2 fma; no int8 dot product (none of avx512_vnni, avx_vnni, amx_int8) "
        "-> the int8 speed-up is measured, not judged"
    )
    assert head[1] == "XNNPACK build: not exposed"
    assert cpu_lines(pi5, "x")[0] == (
        "cpu: arm: asimd asimddp; int8 dot product: asimddp -> the int8 speed-up is judged"
    )
    m = machine(zen3)
    assert m["cpu"] == "AMD EPYC 7B13"
    assert m["cpu_features"]["int8_dot"] == () and m["cpu_features"]["features"] == (
        "avx2",
        "fma",
    )
    assert m["cpu_features"]["int8_speedup_judged"] is False
    assert m["cpu_features"]["reason"] == int8_dot_reason(zen3)
    assert machine(pi5)["cpu_features"]["int8_speedup_judged"] is True
    assert m["xnnpack"].startswith("not exposed by the runtime")


class _CountFaces:
    """A stand-in per-face stage: the number of faces it was given (no timing)."""

    key = "faces_seen"
    title = "faces seen (a test stage)"

    def __init__(self) -> None:
        self.ctx: StageContext | None = None

    def measure(self, ctx: StageContext) -> float:
        self.ctx = ctx
        return float(len(ctx.faces))


def test_a_new_per_face_stage_gets_real_faces_and_a_table_row(models: Path) -> None:
    """The extension point the liveness stage uses (tools.bench.face_stages.FACE_STAGES)."""
    pytest.importorskip("matplotlib", reason="the registry's sample photo comes with matplotlib")
    from tools.bench import BenchFrame, Models, bench_stages, load_frames

    frames, _ = load_frames(Path("/nonexistent-shared"), 640, 480, video_frames=0, limit=1)
    stage = _CountFaces()
    m = Models(
        models / "face_detection_short_range.tflite",
        models / "sface_int8.tflite",
        models / "sface_float32.tflite",
    )
    r = bench_stages(frames, "auto", 1, 1, 1, m, face_stages=[stage])
    assert stage.ctx is not None and stage.ctx.threads == 1
    assert r.extra == {"faces_seen": float(len(stage.ctx.faces))}
    assert all(
        isinstance(f, FaceSample) and isinstance(f.frame, BenchFrame) for f in stage.ctx.faces
    )
    assert all(f.crop.shape == (112, 112, 3) for f in stage.ctx.faces) and stage.ctx.faces
    r.embedder = "sface"
    text = stage_table([r], 1.0, {"sface": {}}, {"faces_seen": stage.title})
    row = next(ln for ln in text.splitlines() if ln.startswith(stage.title))
    assert row.split()[-1] == f"{r.extra['faces_seen']:.2f}"


def test_stage_result_speed_up_and_a_missing_extra_stage() -> None:
    a, b = StageResult("ai_edge_litert", 2), StageResult("ai_edge_litert", 1)
    a.embed_float_invoke_ms, a.embed_int8_invoke_ms = 10.0, 4.0
    a.extra = {"liveness_ms": 2.0}
    assert a.int8_speedup == 2.5
    assert math.isnan(b.int8_speedup)
    text = stage_table([a, b], 1.0, {}, {"liveness_ms": "liveness (per face)"})
    row = next(ln for ln in text.splitlines() if ln.startswith("liveness"))
    assert row.split()[-2:] == ["2.00", "-"]
