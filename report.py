"""Reports over run directories: one Markdown table and PNG plots.

    python run.py report RUN_DIR... [--out DIR]        (or: python report.py RUN_DIR... [--out DIR])

A RUN_DIR is what run.py writes (summary.json, results.jsonl, config.json); a folder holding run directories is
expanded to them. Written to --out (default reports/<timestamp>): report.md, report.json and
  accuracy.png         accuracy with its 95 % Wilson interval, per run
  accuracy_vs_kv.png   latent_mas: accuracy vs the judger's KV bytes, one line per compression policy (points per keep
                       ratio), the uncompressed runs as reference
  time_tokens.png      time per item and generated tokens per item, per run, coloured by method
  fidelity.png         agreement and KL of the compressed judger vs keep ratio (runs made with --fidelity)
  paired.png           each run's paired accuracy difference to its reference run, with its bootstrap interval
Runs of one setting that differ only in seed are summarised together (mean, sd, min-max, t-interval over seeds), and
each run is compared with a reference run over the same items (paired bootstrap interval, exact McNemar test; see
stats.py and `pair_rows`).
Runs are grouped by model, task and data source. Accuracies of different groups are never drawn on one axis: every
plot has one panel per group, and the report names the groups and says that they are not comparable.
A run whose settings match a published number (config/paper/published.yaml, `--published FILE`) gets it in the Runs
table's "paper" column (`published_for`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import stats
from config import keep_text, series_defaults
from errors import RunError
from rundir import RunDirError, is_run, read_run

METHOD_COLOURS = {"baseline": "tab:grey", "text_mas": "tab:blue", "latent_mas": "tab:orange"}
# compression settings other than the keep ratio, and their defaults (a line label names only what differs)
SERIES_DEFAULTS = series_defaults()
# settings that change results but not what is measured: runs of one group that differ in them are flagged
WITHIN_GROUP = ("n", "seed", "temperature", "max_new_tokens", "prompt", "agents", "dtype", "split")
PUBLISHED = Path(__file__).resolve().parent / "config" / "paper" / "published.yaml"


class ReportError(RunError):
    """A path is not a run directory, or nothing can be reported; the message says which."""


@dataclass
class Run:
    path: Path
    summary: dict
    config: dict = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)
    label: str = ""

    @property
    def args(self) -> dict:
        return self.config.get("args", {})

    def get(self, key: str, default=None):
        return self.summary.get(key, default)

    @property
    def method(self) -> str:
        return self.summary.get("method") or "?"

    @property
    def compression(self) -> dict | None:
        return self.summary.get("compression")

    @property
    def group_key(self) -> tuple[str, str, str]:
        source = self.summary.get("data_source") or self.config.get("data", {}).get("source") or "?"
        if source == "file":
            source += f":{self.args.get('data_path')}"
        return str(self.summary.get("model")), str(self.summary.get("task")), source

    def setting(self, key: str):
        if key == "n":
            return self.summary.get("n")
        if key == "dtype":
            return self.config.get("dtype")
        if key == "split":
            return self.config.get("data", {}).get("split")
        return self.summary.get(key, self.args.get(key))


def load_run(path: Path) -> Run:
    try:  # config.json, the records (results.jsonl, then parts not merged yet; read only) and summary.json (rebuilt
        saved = read_run(path)  # as run.py writes it if the run stopped before writing one): rundir.read_run
    except RunDirError as e:
        raise ReportError(str(e)) from None
    if saved.summary is None:
        raise ReportError(f"{path}: no summary.json (nor config.json with results.jsonl); give a run directory "
                          "that run.py wrote")
    return Run(path, saved.summary, saved.config, saved.records)


def find_runs(paths: list[str]) -> list[Run]:
    """The runs in `paths` (run directories, or folders holding them), each once: a run given twice, or given and
    inside a folder given, is one run (it would otherwise be counted twice and paired with itself)."""
    found: dict[Path, Path] = {}  # resolved -> as given, first seen first
    for p in map(Path, paths):
        if not os.path.isdir(p):  # os.path: False, not an exception, for a name too long or no permission
            raise ReportError(f"{p}: not a directory; give run directories (or folders holding them)")
        if is_run(p):
            found.setdefault(p.resolve(), p)
            continue
        inner = sorted(d for d in p.iterdir() if d.is_dir() and is_run(d))
        if not inner:
            raise ReportError(f"{p}: neither a run directory (summary.json, results.jsonl) nor a folder of them")
        for d in inner:
            found.setdefault(d.resolve(), d)
    if not found:
        raise ReportError("no runs given")
    return [load_run(p) for p in found.values()]


# --- grouping and labels -----------------------------------------------------------------------------------------

def group_runs(runs: list[Run]) -> dict[tuple, list[Run]]:
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.group_key, []).append(r)
    return groups


def _group_name(i: int, key: tuple) -> str:
    model, task, source = key
    return f"G{i + 1}: {model} / {task} / {source}"


def _compression_text(c: dict | None) -> str:
    if not c:
        return "none"
    extra = [f"{c.get(k)}" for k, d in SERIES_DEFAULTS.items() if k in c and c.get(k) != d and k != "kv_min_keep"]
    return f"{c['kv_policy']} {keep_text(c['kv_keep'])}" + (f" ({', '.join(map(str, extra))})" if extra else "")


def base_label(r: Run) -> str:
    parts = [r.method]
    if r.get("prompt") not in (None, "sequential"):
        parts.append(str(r.get("prompt")))
    if r.method == "latent_mas":
        parts.append(f"m{r.get('latent_steps')}")
        if r.compression:
            parts.append(_compression_text(r.compression))
    return " ".join(parts)


def label_runs(runs: list[Run]) -> None:
    """Short labels: method, topology if not sequential, latent steps, compression; made unique within a list."""
    for r in runs:
        r.label = base_label(r)
    seen = defaultdict(list)
    for r in runs:
        seen[r.label].append(r)
    for same in seen.values():
        if len(same) > 1:
            seeds = [r.get("seed") for r in same]
            by_seed = None not in seeds and len(set(seeds)) == len(seeds)  # runs of one setting, one per seed
            tails = distinct_tails([r.path for r in same])
            for r, tail in zip(same, tails):
                r.label += f" s{r.get('seed')}" if by_seed else f" [{tail}]"


def distinct_tails(paths: list[Path], width: int = 15) -> list[str]:
    """Short names that tell the paths apart: the last `width` characters of each folder name, or where two share
    them, the shortest tail of the path (parent/name, ...) that differs (two sweeps' cells share folder names)."""
    resolved = [p.resolve() for p in paths]
    for k in range(1, max(len(p.parts) for p in resolved) + 1):
        tails = ["/".join(p.parts[-k:]) for p in resolved]
        if k == 1:
            tails = [t[-width:] for t in tails]
        if len(set(tails)) == len(tails):
            return tails
    return [str(p) for p in resolved]


def series_key(r: Run) -> tuple:
    c = r.compression or {}
    return (c.get("kv_policy"), r.get("latent_steps"), r.get("prompt"), r.setting("agents"),
            *(c.get(k) for k in SERIES_DEFAULTS))


def series_label(key: tuple, keys: list[tuple]) -> str:
    """The policy, plus every other setting that is not the default or that varies among the group's lines."""
    names = ["kv_policy", "latent_steps", "prompt", "agents", *SERIES_DEFAULTS]
    parts = [str(key[0])]
    for i, name in enumerate(names[1:], start=1):
        varies = len({k[i] for k in keys}) > 1
        non_default = name in SERIES_DEFAULTS and key[i] != SERIES_DEFAULTS[name]
        if varies or non_default:
            parts.append(f"m{key[i]}" if name == "latent_steps" else f"{name.removeprefix('kv_')}={key[i]}")
    return " ".join(parts)


def within_group_differences(runs: list[Run]) -> dict[str, list]:
    out = {}
    for key in WITHIN_GROUP:
        values = sorted({json.dumps(r.setting(key)) for r in runs if r.setting(key) is not None})  # None: n/a
        if len(values) > 1:
            out[key] = [json.loads(v) for v in values]
    return out


# --- numbers -------------------------------------------------------------------------------------------------------

def _fmt(x, digits=2, scale=1.0) -> str:
    return "" if x is None else f"{x / scale:.{digits}f}"


def _method_order(r: Run) -> tuple:
    order = list(METHOD_COLOURS)
    return (order.index(r.method) if r.method in order else len(order), r.compression is not None,
            (r.compression or {}).get("kv_policy") or "", (r.compression or {}).get("kv_keep") or 0, r.label)


def run_row(group: str, r: Run) -> dict:
    s = r.summary
    ci = s.get("accuracy_ci95") or [None, None]
    return {"group": group, "run": r.path.name, "path": str(r.path), "label": r.label, "method": r.method,
            "model": s.get("model"), "task": s.get("task"), "data_source": r.group_key[2],
            "prompt": s.get("prompt"), "latent_steps": s.get("latent_steps"), "compression": r.compression,
            "n": s.get("n"), "complete": s.get("complete"), "correct": s.get("correct"),
            "accuracy": s.get("accuracy"), "accuracy_ci95": ci,
            "kv_tokens_judger_mean": s.get("kv_tokens_judger_mean"),
            "kv_bytes_judger_mean": s.get("kv_bytes_judger_mean"),
            "kv_kept_share_judger_mean": s.get("kv_kept_share_judger_mean"),
            "time_per_sample_s": s.get("time_per_sample_s"), "generated_tokens_mean": s.get("generated_tokens_mean"),
            "compress_time_mean_s": s.get("compress_time_mean_s"),
            "fidelity_agreement_mean": s.get("fidelity_agreement_mean"), "fidelity_kl_mean": s.get("fidelity_kl_mean"),
            "fidelity_output_match_rate": s.get("fidelity_output_match_rate"), "data_note": s.get("data_note")}


def method_rows(group: str, runs: list[Run]) -> list[dict]:
    """Per method of a group: time and generated tokens per item over all its runs (weighted by items)."""
    out = []
    for method in sorted({r.method for r in runs}):
        rs = [r for r in runs if r.method == method and r.get("n")]
        n = sum(r.get("n") for r in rs)
        if not n:
            continue
        out.append({"group": group, "method": method, "runs": len(rs), "items": n,
                    "time_per_item_s": sum(r.get("time_per_sample_s", 0) * r.get("n") for r in rs) / n,
                    "generated_tokens_per_item": sum(r.get("generated_tokens_mean", 0) * r.get("n") for r in rs) / n})
    return out


# --- seeds: runs of one setting that differ only in seed ---------------------------------------------------------

def cell_key(r: Run) -> tuple:
    """Everything that defines a setting except the seed: runs with equal keys are one cell of several seeds."""
    rest = (json.dumps(r.setting(k), sort_keys=True) for k in WITHIN_GROUP if k != "seed")
    return (r.group_key, r.method, r.get("prompt"), r.get("latent_steps"), json.dumps(r.compression, sort_keys=True),
            r.args.get("top_p"), *rest)


def seed_cells(runs: list[Run]) -> list[list[Run]]:
    """The cells of a group, in the group's order; a cell holds every run of its setting (one or more seeds)."""
    cells: dict[tuple, list[Run]] = {}
    for r in runs:
        cells.setdefault(cell_key(r), []).append(r)
    return list(cells.values())


def seed_rows(group: str, runs: list[Run]) -> list[dict]:
    """One row per setting that ran with two or more runs: the spread of their accuracies across seeds."""
    out = []
    for cell in seed_cells(runs):
        if len(cell) < 2:
            continue
        spread = stats.t_interval([r.get("accuracy") or 0.0 for r in cell])
        out.append({"group": group, "setting": base_label(cell[0]), "runs": [r.path.name for r in cell],
                    "seeds": [r.get("seed") for r in cell], "n": [r.get("n") for r in cell],
                    "accuracy_mean": spread.mean, "accuracy_sd": spread.sd, "accuracy_min": spread.min,
                    "accuracy_max": spread.max, "accuracy_t_ci95": list(spread.ci),
                    "kv_bytes_judger_mean": _mean_of(cell, "kv_bytes_judger_mean")})
    return out


def _mean_of(runs: list[Run], key: str):
    xs = [r.get(key) for r in runs if r.get(key) is not None]
    return sum(xs) / len(xs) if xs else None


# --- paired comparisons: each run against a reference over the same items -------------------------------------------

def _same_setting_but_compression(a: Run, b: Run) -> bool:
    return all(a.get(k) == b.get(k) for k in ("prompt", "latent_steps")) and a.setting("agents") == b.setting("agents")


def reference_for(r: Run, runs: list[Run]) -> Run | None:
    """A compressed run's reference is the uncompressed run of its method and seed (the one with the same topology
    and latent steps if there is one); every other run's is the group's first run (baseline first). None: r is it."""
    if r.compression:
        plain = [u for u in runs if u is not r and u.method == r.method and not u.compression
                 and u.get("seed") == r.get("seed")]
        exact = [u for u in plain if _same_setting_but_compression(u, r)]
        if exact or plain:
            return (exact or plain)[0]
    return runs[0] if runs[0] is not r else None


def _outcomes(r: Run) -> dict[int, bool]:
    return {int(x["index"]): bool(x.get("correct")) for x in r.records if "index" in x}


def why_not_paired(a: Run, b: Run) -> str | None:
    """One line saying why two runs cannot be paired item by item, or None if they cover the same items."""
    if a.group_key != b.group_key:
        return "different model, task or data source"
    if a.setting("split") != b.setting("split"):
        return f"different splits ({a.setting('split')} vs {b.setting('split')})"
    ia, ib = set(_outcomes(a)), set(_outcomes(b))
    if not ia or not ib:
        return f"no per-item results in `{(a if not ia else b).path.name}`"
    if ia != ib:
        return f"different items ({len(ia)} vs {len(ib)} items, {len(ia & ib)} in common)"
    return None


def pair_row(group: str, r: Run, ref: Run) -> dict:
    a, b = _outcomes(r), _outcomes(ref)
    order = sorted(a)
    p = stats.paired_compare([a[i] for i in order], [b[i] for i in order])
    return {"group": group, "run": r.path.name, "label": r.label, "reference": ref.path.name,
            "reference_label": ref.label, "n": p.n, "accuracy": p.acc_a, "accuracy_reference": p.acc_b,
            "diff": p.diff, "diff_ci95_bootstrap": list(p.ci), "wins": p.wins, "losses": p.losses, "ties": p.ties,
            "p_mcnemar_exact": p.p_mcnemar, "compression": r.compression,
            "fidelity_agreement_mean": r.get("fidelity_agreement_mean"), "fidelity_kl_mean": r.get("fidelity_kl_mean"),
            "kv_bytes_judger_mean": r.get("kv_bytes_judger_mean"),
            "kv_bytes_judger_mean_reference": ref.get("kv_bytes_judger_mean")}


def pair_rows(groups: list[tuple[str, list[Run]]], baseline: Run | None = None) -> tuple[list[dict], list[str]]:
    """Every run against its reference (`baseline` for all, if given): the rows, and one line per refused pair."""
    rows, refused = [], []
    for name, runs in groups:
        for r in runs:
            ref = (baseline if baseline is not r else None) if baseline else reference_for(r, runs)
            if ref is None:
                continue
            reason = why_not_paired(r, ref)
            if reason:
                refused.append(f"`{r.label}` ({r.path.name}) is not paired with `{ref.label}` ({ref.path.name}): "
                               f"{reason}.")
            else:
                rows.append(pair_row(name, r, ref))
    return rows, refused


# --- published numbers: "paper vs this run" -----------------------------------------------------------------------

def load_published(path: Path | None) -> list[dict]:
    """The rows of a published-numbers file (see config/paper/published.yaml): each {source, short, settings,
    accuracy (a fraction), n}; [] without a file."""
    if path is None or not Path(path).exists():
        return []
    import yaml

    try:
        tables = (yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}).get("tables") or []
        rows = [{"source": t["source"], "short": t.get("short") or t["source"],
                 "settings": {**(t.get("settings") or {}), **{k: v for k, v in row.items()
                                                             if k not in ("accuracy", "n")}},
                 "accuracy": float(row["accuracy"]) / 100, "n": row.get("n", t.get("n"))}
                for t in tables for row in t["rows"]]
    except (OSError, ValueError, TypeError, KeyError, AttributeError, yaml.YAMLError) as e:
        raise ReportError(f"--published {path}: not a published-numbers file ({type(e).__name__}: {e}); see "
                          "config/paper/published.yaml") from None
    return rows


def _model_id(name) -> str:
    return Path(str(name).rstrip("/")).name.lower()


def _run_value(r: Run, key: str):
    c = r.compression or {}
    if key == "model":
        return r.get("model")
    if key == "kv_policy":
        return c.get("kv_policy", "none")
    if key in c:
        return c[key]
    return r.summary[key] if key in r.summary else r.args.get(key)


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) < 1e-9
    return a == b


def published_for(r: Run, published: list[dict]) -> list[dict]:
    """The published rows whose settings the run has: `model` by its last path component (case aside), a setting
    the run's method has no use for (None in its summary: prompt and latent_steps for baseline) skipped, and a row
    naming no kv_policy only for an uncompressed run."""
    out = []
    for row in published:
        settings = {"kv_policy": "none", **row["settings"]}
        ok = True
        for key, want in settings.items():
            have = _run_value(r, key)
            if key == "model":
                ok = have is not None and _model_id(have) == _model_id(want)
            elif have is not None:
                ok = _same(have, want)
            if not ok:
                break
        if ok:
            out.append(row)
    return out


def _published_text(published: list[dict], shorts: dict) -> str:
    return "; ".join(f"{p['accuracy']:.3f} ({shorts[p['source']]}" + (f", n={p['n']}" if p["n"] else "") + ")"
                     for p in published)


# --- plots ---------------------------------------------------------------------------------------------------------

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
    kv = _mean_of(cell, "kv_bytes_judger_mean") / 2 ** 20
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
    groups = [(name, [r for r in rs if r.compression and r.get("fidelity_agreement_mean") is not None])
              for name, rs in groups]
    groups = [(name, rs) for name, rs in groups if rs]
    if not groups:
        return None
    fig, axes = _figure(len(groups), 2, 5.5, 3.8)
    for (ax_a, ax_k), (name, runs) in zip(axes, groups):
        keys = sorted({series_key(r) for r in runs}, key=str)
        for key in keys:
            pts = sorted((r for r in runs if series_key(r) == key), key=lambda r: r.compression["kv_keep"])
            xs = [r.compression["kv_keep"] for r in pts]
            label = series_label(key, keys)
            ax_a.plot(xs, [r.get("fidelity_agreement_mean") for r in pts], marker="o", label=label)
            ax_k.plot(xs, [r.get("fidelity_kl_mean") for r in pts], marker="o", label=label)
        ax_a.set_ylabel("top-1 agreement with the uncompressed judger")
        ax_a.set_ylim(-0.02, 1.02)
        ax_k.set_ylabel("KL(full || compressed), nats/token")
        for ax in (ax_a, ax_k):
            ax.set_xlabel("keep ratio (--kv_keep)")
            ax.grid(alpha=0.3)
        ax_a.set_title(name, fontsize=9)
        ax_a.legend(fontsize=7)
    return _save(fig, out / "fidelity.png")


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path


# --- the report ----------------------------------------------------------------------------------------------------

def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]


def _pct(x) -> str:
    return "" if x is None else f"{x:.3f}"


def _mib(x) -> str:
    return _fmt(x, 2, 2 ** 20)


def seeds_markdown(seeds: list[dict]) -> list[str]:
    if not seeds:
        return []
    md = ["", "## Seeds (runs of one setting that differ only in seed)", "",
          "Mean of the runs' accuracies; sd: their sample standard deviation; CI: the 95% Student-t interval over the "
          "seeds, mean +- t(0.975, k-1) sd / sqrt(k) for k runs. It measures seed-to-seed variation only (runs whose "
          "seeds agree, as greedy decoding does, give sd 0); item-level uncertainty is each run's Wilson interval.", ""]
    return md + _md_table(
        ["group", "setting", "seeds", "items/run", "mean accuracy", "sd", "min-max", "95% t-interval over seeds"],
        [[c["group"].split(":")[0], c["setting"], ", ".join(map(str, c["seeds"])),
          ", ".join(sorted({str(n) for n in c["n"]})), _pct(c["accuracy_mean"]), _pct(c["accuracy_sd"]),
          f"{_pct(c['accuracy_min'])}-{_pct(c['accuracy_max'])}",
          f"[{_pct(c['accuracy_t_ci95'][0])}, {_pct(c['accuracy_t_ci95'][1])}]"] for c in seeds])


def paired_markdown(pairs: list[dict], not_paired: list[str], baseline: Run | None) -> list[str]:
    md = ["", "## Paired comparisons (same items)", ""]
    rule = (f"Every run is paired with the baseline `{baseline.label}` ({baseline.path.name})." if baseline else
            "Each compressed run is paired with the uncompressed run of its method and seed (same topology and latent "
            "steps where there is one); every other run with its group's first run (`--baseline RUN_DIR` picks one "
            "reference for all).")
    md += [rule + " Only runs over the same items (task, data source, split and item indices) are paired. Δ: "
           "run accuracy minus reference accuracy over those items, with a 95% paired bootstrap interval "
           f"(percentile, {stats.BOOTSTRAP_RESAMPLES} resamples of the items, seed {stats.BOOTSTRAP_SEED}); "
           "wins / losses / ties: items only the run got right / only the reference got right / both alike; p: exact "
           "McNemar test (two-sided binomial test, p = 1/2, on the wins and losses). Agreement, KL and KV are the "
           "run's fidelity to the uncompressed judger and its judger cache against the reference's.", ""]
    if pairs:
        md += _md_table(
            ["group", "run", "reference", "items", "accuracy run / ref", "Δ accuracy [95% paired bootstrap CI]",
             "wins / losses / ties", "McNemar exact p", "agreement", "KL", "judger KV MiB run / ref"],
            [[p["group"].split(":")[0], p["label"], p["reference_label"], str(p["n"]),
              f"{p['accuracy']:.3f} / {p['accuracy_reference']:.3f}",
              f"{p['diff']:+.3f} [{p['diff_ci95_bootstrap'][0]:+.3f}, {p['diff_ci95_bootstrap'][1]:+.3f}]",
              f"{p['wins']} / {p['losses']} / {p['ties']}", f"{p['p_mcnemar_exact']:.3g}",
              _fmt(p["fidelity_agreement_mean"], 3), _fmt(p["fidelity_kl_mean"], 4),
              f"{_mib(p['kv_bytes_judger_mean'])} / {_mib(p['kv_bytes_judger_mean_reference'])}"] for p in pairs])
    elif not not_paired:
        md += ["- nothing to pair: one run per group"]
    if not_paired:
        md += [""] + [f"- Not paired: {line}" for line in not_paired]
    return md


def _find_baseline(runs: list[Run], path: str | None) -> Run | None:
    """The --baseline run: one of the runs given, else read and added to them."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_dir() or not is_run(p):
        raise ReportError(f"--baseline {p}: not a run directory (summary.json, results.jsonl)")
    for r in runs:
        if r.path.resolve() == p.resolve():
            return r
    runs.append(load_run(p))
    return runs[-1]


def build_report(paths: list[str], out: Path, command: str | None = None, baseline: str | None = None,
                 published: Path | None = PUBLISHED) -> dict:
    """Read the runs, write report.md, report.json and the plots to `out`; return what was written. `baseline`: a run
    directory every run is paired with (default: each run's reference, see `reference_for`). `published`: the
    published-numbers file (None: no "paper" column)."""
    papers = load_published(published)
    runs = find_runs(paths)
    base = _find_baseline(runs, baseline)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"--out {out}: cannot create it ({e.strerror}); give a writable folder") from None
    grouped = group_runs(runs)
    groups = []
    for i, (key, rs) in enumerate(grouped.items()):
        label_runs(rs)
        groups.append((_group_name(i, key), sorted(rs, key=_method_order)))
    pairs, not_paired = pair_rows(groups, base)
    seeds = [row for name, rs in groups for row in seed_rows(name, rs)]
    plots = {"accuracy": plot_accuracy(groups, out), "accuracy_vs_kv": plot_accuracy_vs_kv(groups, out),
             "time_tokens": plot_time_tokens(groups, out), "fidelity": plot_fidelity(groups, out),
             "paired": plot_paired(groups, pairs, out)}
    rows = [run_row(name, r) for name, rs in groups for r in rs]
    for row, r in zip(rows, (r for _, rs in groups for r in rs)):
        row["published"] = [{"accuracy": p["accuracy"], "n": p["n"], "source": p["source"]}
                            for p in published_for(r, papers)]
    per_method = [m for name, rs in groups for m in method_rows(name, rs)]
    notes = []
    if len(groups) > 1:
        notes.append(f"**Not comparable:** these runs differ in model, task or data source and form {len(groups)} "
                     "groups. Their accuracies are never drawn on one axis (one panel per group) and should not be "
                     "compared across groups.")
    for name, rs in groups:
        diff = within_group_differences(rs)
        if diff:
            notes.append(f"Within {name.split(':')[0]} the runs also differ in "
                         + "; ".join(f"{k} ({', '.join(map(str, v))})" for k, v in diff.items())
                         + ": read accuracy differences there with that in mind.")
        for r in rs:
            if r.get("complete") is False:
                notes.append(f"`{r.path.name}` is partial: {r.get('n')} of {r.get('n_expected')} items.")
        for note in sorted({r.get("data_note") for r in rs if r.get("data_note")}):
            notes.append(f"{name.split(':')[0]} data: {note}")

    md = ["# LatentMAS-KV report", ""]
    md.append(f"{len(runs)} run(s), made {datetime.now().strftime('%Y-%m-%d %H:%M')}"
              + (f" with `{command}`" if command else "") + ".")
    md += ["", "## Groups (same model, task and data source)", ""]
    md += [f"- {name} ({len(rs)} run(s))" for name, rs in groups]
    if notes:
        md += [""] + [f"- {n}" for n in notes]
    md += ["", "## Runs", ""]
    paper = any(row["published"] for row in rows)  # "paper vs this run": a column only when a run matches
    shorts = {p["source"]: p["short"] for p in papers}
    header = ["group", "run", "n", "accuracy [95% CI]", *(["paper"] if paper else []), "judger KV tokens",
              "judger KV MiB", "kept share", "time/item s", "gen. tokens/item", "compress s/item", "agreement", "KL"]
    md += _md_table(header, [[
        row["group"].split(":")[0], row["label"], f"{row['n']}" + (" (partial)" if row["complete"] is False else ""),
        f"{_fmt(row['accuracy'], 3)} [{_fmt(row['accuracy_ci95'][0], 2)}, {_fmt(row['accuracy_ci95'][1], 2)}]",
        *([_published_text(row["published"], shorts)] if paper else []),
        _fmt(row["kv_tokens_judger_mean"], 1), _fmt(row["kv_bytes_judger_mean"], 2, 2 ** 20),
        _fmt(row["kv_kept_share_judger_mean"], 3), _fmt(row["time_per_sample_s"], 2),
        _fmt(row["generated_tokens_mean"], 1), _fmt(row["compress_time_mean_s"], 4),
        _fmt(row["fidelity_agreement_mean"], 3), _fmt(row["fidelity_kl_mean"], 4)] for row in rows])
    if paper:
        used = {p["source"] for row in rows for p in row["published"]}
        md += ["", "paper: the published accuracy of the same setting (model, task, method, topology, latent steps and "
               "compression as listed in the published-numbers file; decoding and items are not matched, so compare "
               "n). " + "; ".join(f"{short} = {source}" for source, short in shorts.items() if source in used) + "."]
    md += ["", "Run directories: " + ", ".join(f"`{row['label']}` = `{row['path']}`" for row in rows)]
    md += seeds_markdown(seeds)
    md += paired_markdown(pairs, not_paired, base)
    md += ["", "## Per method", ""]
    md += _md_table(["group", "method", "runs", "items", "time/item s", "generated tokens/item"],
                    [[m["group"].split(":")[0], m["method"], str(m["runs"]), str(m["items"]),
                      _fmt(m["time_per_item_s"], 2), _fmt(m["generated_tokens_per_item"], 1)] for m in per_method])
    md += ["", "## Plots", ""]
    captions = {"accuracy": "Accuracy with 95% Wilson interval per run",
                "accuracy_vs_kv": "latent_mas: accuracy vs judger KV cache size (one line per policy, points per keep "
                                  "ratio, the seeds of one setting averaged with their t-interval; the dashed line "
                                 "and star: the uncompressed run)",
                "time_tokens": "Time per item and generated tokens per item",
                "fidelity": "Fidelity of the compressed judger vs keep ratio",
                "paired": "Paired accuracy difference of each run to its reference, 95% paired bootstrap interval"}
    for name, path in plots.items():
        md += [f"![{captions[name]}]({path.name})", ""] if path else [f"- {captions[name]}: no runs for this plot", ""]
    (out / "report.md").write_text("\n".join(md) + "\n")
    result = {"groups": [{"name": name, "runs": [r.path.name for r in rs]} for name, rs in groups], "notes": notes,
              "runs": rows, "per_method": per_method, "seeds": seeds, "paired": pairs, "not_paired": not_paired,
              "paired_method": {"difference_ci": f"paired bootstrap percentile interval, {stats.BOOTSTRAP_RESAMPLES} "
                                                 f"item resamples, seed {stats.BOOTSTRAP_SEED}",
                                "test": "exact McNemar (two-sided binomial on the discordant items)"},
              "plots": {k: v.name if v else None for k, v in plots.items()}}
    (out / "report.json").write_text(json.dumps(result, indent=2))
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "Markdown table and PNG plots from run directories."
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, or folders holding them")
    p.add_argument("--out", default=None, help="output folder (default: reports/<timestamp>)")
    p.add_argument("--published", default=str(PUBLISHED), metavar="FILE",
                   help="published accuracies to show beside matching runs ('none': no paper column)")
    p.add_argument("--baseline", default=None, metavar="RUN_DIR",
                   help="pair every run with this run (default: a compressed run with the uncompressed run of its "
                        "method and seed, any other run with its group's first run)")


def command(args: argparse.Namespace) -> int:
    out = Path(args.out or Path("reports") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    if os.path.exists(out) and not os.path.isdir(out):
        raise ReportError(f"--out {out} is a file; give a folder for report.md, report.json and the plots")
    result = build_report(args.runs, out, command="python run.py report " + " ".join(args.argv),
                          baseline=args.baseline, published=None if args.published == "none" else Path(args.published))
    print(f"[report] {len(result['runs'])} run(s) in {len(result['groups'])} group(s) -> {out / 'report.md'}",
          file=sys.stderr)
    return 0

