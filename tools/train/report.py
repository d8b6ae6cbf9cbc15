"""The training report: ``training_report.md``, ``.json`` and two PNGs.

* ``training_curves.png``: the loss and the share of active triplets per
  step (raw and smoothed), and the validation TAR at FAR 1e-3 at each
  evaluation with the step early stopping kept;
* ``distances.png``: genuine and impostor cosine distances of the test
  people before and after fine-tuning.

Nothing is decided here; every number comes from the run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.vision.manifest import write_json_atomic

log = logging.getLogger("tools.train")


def _pct(x: float | None, nd: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{nd}f}%"


def _smooth(y: npt.NDArray[np.float64], n: int = 25) -> npt.NDArray[np.float64]:
    if len(y) < n:
        return y
    k = np.ones(n) / n
    return np.convolve(y, k, mode="valid")


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(rep: dict[str, Any], path: Path) -> Path | None:
    """Loss, active-triplet share and validation TAR against the step."""
    plt = _pyplot()
    hist = rep["training"]["history"]
    if plt is None or not hist:
        return None
    steps = np.array([h["step"] for h in hist], dtype=np.float64)
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), dpi=100, sharex=True)
    for ax, key, label in (
        (axes[0], "loss", "triplet loss (mean per triplet)"),
        (axes[1], "active", "active triplets (share)"),
    ):
        y = np.array([h[key] for h in hist], dtype=np.float64)
        ax.plot(steps, y, color="0.75", lw=0.8, label="per step")
        sm = _smooth(y)
        ax.plot(steps[len(steps) - len(sm) :], sm, color="tab:blue", lw=1.6, label="smoothed")
        ax.set_ylabel(label)
        ax.legend(loc="upper right", fontsize=8)
        ax.grid(alpha=0.3)
    ev = [e for e in rep["training"]["evals"] if e["val_score"] is not None]
    axes[2].plot([e["step"] for e in ev], [e["val_score"] for e in ev], "o-", color="tab:green")
    far = ev[0]["val_score_far"] if ev else 1e-3
    axes[2].axvline(rep["training"]["best_step"], color="black", ls="--", lw=1, label="kept")
    axes[2].set_ylabel(f"validation TAR at FAR {far:.2g}")
    axes[2].set_xlabel("step")
    axes[2].legend(loc="lower right", fontsize=8)
    axes[2].grid(alpha=0.3)
    m = rep["model"]
    fig.suptitle(f"{m['start_name']} -> {m['name']}: {rep['loop']['mining']} mining")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_distances(
    before: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]],
    after: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]],
    path: Path,
    title: str,
) -> Path | None:
    """Genuine/impostor distance histograms of the test people, before (top) and after."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(2, 1, figsize=(8, 7), dpi=100, sharex=True)
    every = np.concatenate([*before, *after])
    bins = np.linspace(0.0, float(min(2.0, every.max() + 0.05)) if every.size else 2.0, 70)
    for ax, (gen, imp), label in ((axes[0], before, "before"), (axes[1], after, "after")):
        ax.hist(imp, bins=bins, density=True, alpha=0.55, color="tab:red", label="impostor")
        ax.hist(gen, bins=bins, density=True, alpha=0.55, color="tab:blue", label="genuine")
        ax.set_ylabel(f"density ({label})")
        ax.legend(loc="upper right", fontsize=8)
        ax.grid(alpha=0.3)
    axes[1].set_xlabel("cosine distance 1 - cos (test people, never trained on)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _numbers_table(rep: dict[str, Any]) -> list[str]:
    lines = [
        "| test people (never trained on, never selected on) | TAR at FAR 1e-3 | "
        "TAR at FAR 1e-4 | FNIR at FPIR 1% |",
        "|---|---|---|---|",
    ]
    for key, label in (
        ("float_before", "float, before"),
        ("float_after", "float, after"),
        ("int8_before", "int8 on the device path, before"),
        ("int8_after", "int8 on the device path, after"),
    ):
        h = rep["test"].get(key)
        if h is None:
            continue
        t = h["tar_at_far"]
        lines.append(
            f"| {label} | {_pct(t.get('0.001'))} | {_pct(t.get('0.0001'))} "
            f"| {_pct(h['fnir_at_fpir'])} |"
        )
    return lines


def render_markdown(rep: dict[str, Any]) -> str:
    tr, lp, sp, tm = rep["training"], rep["loop"], rep["split"], rep["timing"]
    fb = rep["test"]["float_before"]
    lines = [
        f"# Training report: {rep['model']['name']}",
        "",
        f"Start: {rep['model']['start']}; trainable blocks: "
        f"{', '.join(rep['model']['trainable_blocks'])}.",
        f"Data: `{rep['data']['folder']}`: {rep['data']['faces']} faces of "
        f"{rep['data']['people']} people ({rep['data']['no_face']} photos without a usable "
        f"face; {len(rep['data']['left_out'])} people left out for too few faces).",
        f"People split (seed {sp['seed']}): {len(sp['train'])} train, {len(sp['val'])} "
        f"validation (early stopping), {len(sp['test'])} test (the numbers below).",
        f"Loop: {tr['steps_done']} steps of P={lp['people_per_batch']} x K="
        f"{lp['photos_per_person']}, {lp['mining']} mining, alpha {lp['alpha']}, Adam peak LR "
        f"{lp['lr']:g} (warm-up {lp['warmup']}, cosine), seed {lp['seed']}. {tr['stopped']}.",
        "",
        *_numbers_table(rep),
        "",
        f"Test set: {fb['faces']} faces of {fb['people']} people "
        f"(at most {lp['eval_max_per_person']} each), {fb['genuine_pairs']} genuine and "
        f"{fb['impostor_pairs']} impostor pairs; open set: {fb['enrolled']} enrolled from one "
        f"photo, {fb['mated_searches']} mated and {fb['stranger_searches']} stranger searches.",
        "",
        f"Verdict: {rep['verdict']}",
        "",
        f"Time: {tm['total_wall_s'] / 60:.1f} min wall, {tm['total_cpu_s'] / 60:.1f} min CPU "
        f"on {tm['cpus']} CPUs (training {tm['train_wall_s'] / 60:.1f} min wall, "
        f"{tm['train_cpu_s'] / 60:.1f} min CPU).",
        "",
    ]
    out = rep.get("outputs", {})
    if out:
        lines += ["Outputs:", ""] + [f"- {k}: `{v}`" for k, v in out.items()] + [""]
    return "\n".join(lines)


def write(
    rep: dict[str, Any],
    out: Path,
    before: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]],
    after: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]],
) -> dict[str, Path]:
    """Write the report files into ``out``; returns them by kind."""
    files: dict[str, Path] = {}
    curves = plot_curves(rep, out / "training_curves.png")
    dists = plot_distances(
        before, after, out / "distances.png", f"{rep['model']['name']}: test people"
    )
    if curves is None or dists is None:
        log.warning("matplotlib is not installed: plots skipped (pip install facegate[tools])")
    else:
        files["curves"], files["distances"] = curves, dists
    write_json_atomic(out / "training_report.json", rep)
    files["json"] = out / "training_report.json"
    (out / "training_report.md").write_text(render_markdown(rep), encoding="utf-8")
    files["md"] = out / "training_report.md"
    return files
