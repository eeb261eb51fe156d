"""The plots of a report, one PNG each, one panel per group (accuracies of different groups never share an axis)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import stats
from config import keep_text
from report.runs import Run, series_key, series_label
from report.tables import mean_of, seed_cells

METHOD_COLOURS = {"baseline": "tab:grey", "text_mas": "tab:blue", "latent_mas": "tab:orange"}
CAPTIONS = {"accuracy": "Accuracy with 95% Wilson interval per run",
            "accuracy_vs_kv": "latent_mas: accuracy vs judger KV cache size (one line per policy, points per keep "
                              "ratio, the seeds of one setting averaged with their t-interval; the dashed line "
                              "and star: the uncompressed run)",
            "time_tokens": "Time per item and generated tokens per item",
            "fidelity": "Fidelity of the compressed judger vs keep ratio",
            "fidelity_vs_kv": "Fidelity of the compressed judger vs its KV bytes: one line per method (token policy, "
                              "KVComm layers, int8/int4 and their compositions), points per setting",
            "paired": "Paired accuracy difference of each run to its reference, 95% paired bootstrap interval"}


def draw_all(groups: list[tuple[str, list[Run]]], pairs: list[dict], out: Path) -> dict[str, Path | None]:
    """Every plot (None where no run fits it), by the names of CAPTIONS."""
    return {"accuracy": plot_accuracy(groups, out), "accuracy_vs_kv": plot_accuracy_vs_kv(groups, out),
            "time_tokens": plot_time_tokens(groups, out), "fidelity": plot_fidelity(groups, out),
            "fidelity_vs_kv": plot_fidelity_vs_kv(groups, out), "paired": plot_paired(groups, pairs, out)}


def _figure(rows: int, cols: int, width: float, height: float, ratios: list[float] | None = None):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, gridspec_kw={"height_ratios": ratios} if ratios else None)
    return fig, axes


def _err(r: Run) -> tuple[float, float]:
    acc = r.get("accuracy") or 0.0
    lo, hi = r.get("accuracy_ci95") or [acc, acc]
    return max(acc - lo, 0.0), max(hi - acc, 0.0)


def plot_accuracy(groups: list[tuple[str, list[Run]]], out: Path) -> Path:
    heights = [max(1.6, 0.35 * len(rs) + 1.0) for _, rs in groups]
    fig, axes = _figure(len(groups), 1, 9, sum(heights) / len(groups), heights)
    for ax, (name, runs) in zip(axes[:, 0], groups):
        ys = list(range(len(runs)))[::-1]
        for y, r in zip(ys, runs):
            lo, hi = _err(r)
            ax.errorbar([r.get("accuracy") or 0.0], [y], xerr=[[lo], [hi]], fmt="o", capsize=4,
                        color=METHOD_COLOURS.get(r.method, "black"))
        ax.set_yticks(ys)
        ax.set_yticklabels([f"{r.label} (n={r.get('n')})" for r in runs], fontsize=8)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.6, len(runs) - 0.4)
        ax.set_xlabel("accuracy (95% Wilson interval)")
        ax.set_title(name, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    if len(groups) > 1:
        fig.suptitle("different model / task / data source per panel: not comparable across panels", fontsize=9)
    return _save(fig, out / "accuracy.png")


def _cell_point(cell: list[Run]) -> tuple[float, float, tuple[float, float]]:
    """(KV MiB, accuracy, (err down, err up)) of a cell: one run with its Wilson interval, several seeds as their mean
    with the t-interval over seeds."""
    kv = mean_of(cell, "kv_bytes_judger_mean") / 2 ** 20
    if len(cell) == 1:
        return kv, cell[0].get("accuracy") or 0.0, _err(cell[0])
    spread = stats.t_interval([r.get("accuracy") or 0.0 for r in cell])
    return kv, spread.mean, (spread.mean - spread.ci[0], spread.ci[1] - spread.mean)


def plot_accuracy_vs_kv(groups: list[tuple[str, list[Run]]], out: Path) -> Path | None:
    groups = [(name, [r for r in rs if r.method == "latent_mas" and r.get("kv_bytes_judger_mean") is not None])
              for name, rs in groups]
    groups = [(name, rs) for name, rs in groups if rs]
    if not groups:
        return None
    fig, axes = _figure(len(groups), 1, 8, 4.2)
    for ax, (name, runs) in zip(axes[:, 0], groups):
        cells = seed_cells(runs)  # a point per setting: the seeds of one setting are one point
        compressed = [c for c in cells if c[0].compression]
        keys = sorted({series_key(c[0]) for c in compressed}, key=str)
        for key in keys:
            pts = sorted((c for c in compressed if series_key(c[0]) == key), key=lambda c: c[0].compression["kv_keep"])
            xs, ys, errs = zip(*[_cell_point(c) for c in pts])
            line = ax.errorbar(xs, ys, yerr=list(zip(*errs)), marker="o", capsize=3, label=series_label(key, keys))
            for x, y, c in zip(xs, ys, pts):
                seeds = f" x{len(c)}" if len(c) > 1 else ""
                ax.annotate(f"{keep_text(c[0].compression['kv_keep'])}{seeds}", (x, y), textcoords="offset points",
                            xytext=(4, 4), fontsize=7, color=line[0].get_color())
        for c in (c for c in cells if not c[0].compression):
            x, acc, (lo, hi) = _cell_point(c)
            ax.axhline(acc, color="black", linestyle="--", linewidth=1)
            seeds = f", {len(c)} seeds" if len(c) > 1 else ""
            ax.errorbar([x], [acc], yerr=[[lo], [hi]], fmt="*", markersize=11, color="black", capsize=3,
                        label=f"uncompressed m{c[0].get('latent_steps')}{seeds} (reference)")
        ax.set_xlabel("judger KV cache, MiB (mean over items)")
        ax.set_ylabel("accuracy (95% CI)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    if len(groups) > 1:
        fig.suptitle("different model / task / data source per panel: not comparable across panels", fontsize=9)
    return _save(fig, out / "accuracy_vs_kv.png")


def plot_paired(groups: list[tuple[str, list[Run]]], pairs: list[dict], out: Path) -> Path | None:
    """Per group, each paired run's accuracy difference to its reference with the paired bootstrap interval."""
    groups = [(name, [p for p in pairs if p["group"] == name]) for name, _ in groups]
    groups = [(name, ps) for name, ps in groups if ps]
    if not groups:
        return None
    heights = [max(1.6, 0.35 * len(ps) + 1.0) for _, ps in groups]
    fig, axes = _figure(len(groups), 1, 9, sum(heights) / len(groups), heights)
    for ax, (name, ps) in zip(axes[:, 0], groups):
        ys = list(range(len(ps)))[::-1]
        for y, p in zip(ys, ps):
            lo, hi = p["diff_ci95_bootstrap"]
            ax.errorbar([p["diff"]], [y], xerr=[[p["diff"] - lo], [hi - p["diff"]]], fmt="o", capsize=4,
                        color="tab:red" if p["p_mcnemar_exact"] < 0.05 else "tab:grey")
            ax.annotate(f"p={p['p_mcnemar_exact']:.2g}", (hi, y), textcoords="offset points", xytext=(5, -3),
                        fontsize=7)
        ax.axvline(0, color="black", linewidth=1)
        ax.set_yticks(ys)
        ax.set_yticklabels([f"{p['label']} vs {p['reference_label']} (n={p['n']})" for p in ps], fontsize=8)
        ax.set_ylim(-0.6, len(ps) - 0.4)
        ax.set_xlim(-1.05, 1.05)
        ax.set_xlabel("accuracy, run - reference, paired over items (95% bootstrap interval)\n"
                      "red: exact McNemar p < 0.05", fontsize=9)
        ax.set_title(name, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    return _save(fig, out / "paired.png")


def plot_time_tokens(groups: list[tuple[str, list[Run]]], out: Path) -> Path:
    heights = [max(2.0, 0.3 * len(rs) + 1.2) for _, rs in groups]
    fig, axes = _figure(len(groups), 2, 6.5, sum(heights) / len(groups), heights)
    for (ax_t, ax_g), (name, runs) in zip(axes, groups):
        ys = list(range(len(runs)))[::-1]
        colours = [METHOD_COLOURS.get(r.method, "black") for r in runs]
        ax_t.barh(ys, [r.get("time_per_sample_s") or 0.0 for r in runs], color=colours)
        ax_g.barh(ys, [r.get("generated_tokens_mean") or 0.0 for r in runs], color=colours)
        ax_t.set_yticks(ys)
        ax_t.set_yticklabels([r.label for r in runs], fontsize=8)
        ax_g.set_yticks(ys)
        ax_g.set_yticklabels([])
        ax_t.set_xlabel("time per item, s")
        ax_g.set_xlabel("generated tokens per item")
        ax_t.set_title(name, fontsize=9)
        ax_g.set_title("colour: method (grey baseline, blue text_mas, orange latent_mas)", fontsize=8)
    return _save(fig, out / "time_tokens.png")


def plot_fidelity(groups: list[tuple[str, list[Run]]], out: Path) -> Path | None:
    """Agreement and KL against the keep ratio, one line per policy."""
    return _fidelity_against(groups, out / "fidelity.png", lambda r: r.compression.get("kv_keep"),
                             "keep ratio (--kv_keep)")


def plot_fidelity_vs_kv(groups: list[tuple[str, list[Run]]], out: Path) -> Path | None:
    """Agreement and KL against the judger's KV MiB: where the hand-off methods compete (matched byte budgets)."""
    def mib(r: Run) -> float | None:
        b = r.get("kv_bytes_judger_mean")
        return None if b is None else b / 2 ** 20

    return _fidelity_against(groups, out / "fidelity_vs_kv.png", mib, "judger KV cache, MiB (mean over items)")


def _fidelity_against(groups: list[tuple[str, list[Run]]], path: Path, x: Callable[[Run], float | None],
                      xlabel: str) -> Path | None:
    """Top-1 agreement and KL of the compressed runs that measured fidelity, against x(run) (None: left out)."""
    groups = [(name, [r for r in rs if r.compression and r.get("fidelity_agreement_mean") is not None
                      and x(r) is not None]) for name, rs in groups]
    groups = [(name, rs) for name, rs in groups if rs]
    if not groups:
        return None
    fig, axes = _figure(len(groups), 2, 5.5, 3.8)
    for (ax_a, ax_k), (name, runs) in zip(axes, groups):
        keys = sorted({series_key(r) for r in runs}, key=str)
        for key in keys:
            pts = sorted((r for r in runs if series_key(r) == key), key=x)
            label = series_label(key, keys)
            ax_a.plot([x(r) for r in pts], [r.get("fidelity_agreement_mean") for r in pts], marker="o", label=label)
            ax_k.plot([x(r) for r in pts], [r.get("fidelity_kl_mean") for r in pts], marker="o", label=label)
        ax_a.set_ylabel("top-1 agreement with the uncompressed judger")
        ax_a.set_ylim(-0.02, 1.02)
        ax_k.set_ylabel("KL(full || compressed), nats/token")
        for ax in (ax_a, ax_k):
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
        ax_a.set_title(name, fontsize=9)
        ax_a.legend(fontsize=7)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path
