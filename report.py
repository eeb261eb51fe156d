"""Reports over run directories: one Markdown table and PNG plots.

    python run.py report RUN_DIR... [--out DIR]        (or: python report.py RUN_DIR... [--out DIR])

A RUN_DIR is what run.py writes (summary.json, results.jsonl, config.json); a folder holding run directories is
expanded to them. Written to --out (default reports/<timestamp>): report.md, report.json and
  accuracy.png         accuracy with its 95 % Wilson interval, per run
  accuracy_vs_kv.png   latent_mas: accuracy vs the judger's KV bytes, one line per compression policy (points per keep
                       ratio), the uncompressed runs as reference
  time_tokens.png      time per item and generated tokens per item, per run, coloured by method
  fidelity.png         agreement and KL of the compressed judger vs keep ratio (runs made with --fidelity)
Runs are grouped by model, task and data source. Accuracies of different groups are never drawn on one axis: every
plot has one panel per group, and the report names the groups and says that they are not comparable.
"""
from __future__ import annotations

import argparse
import json
import sys
from argparse import Namespace
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from parallel import collect
from utils import RunDirError

METHOD_COLOURS = {"baseline": "tab:grey", "text_mas": "tab:blue", "latent_mas": "tab:orange"}
# compression settings other than the keep ratio, and their defaults (a line label names only what differs)
SERIES_DEFAULTS = {"kv_scope": "shared", "kv_positions": "original", "compress_at": "every", "kv_query": "embed-mean",
                   "kv_protect": "none", "kv_min_keep": 5, "include_old_prompts": False}
# settings that change results but not what is measured: runs of one group that differ in them are flagged
WITHIN_GROUP = ("n", "seed", "temperature", "max_new_tokens", "prompt", "agents", "dtype", "split")


class ReportError(Exception):
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


def _is_run(path: Path) -> bool:
    return (path / "summary.json").exists() or (path / "results.jsonl").exists() or (path / "parts").is_dir()


def load_run(path: Path) -> Run:
    summary_path, config_path = path / "summary.json", path / "config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    try:  # results.jsonl, then the part files of a scale-out launch that was not merged yet; read only
        records = list(collect(path).values())
    except RunDirError as e:
        raise ReportError(str(e)) from None
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
    elif config and records:  # killed before it wrote a summary: rebuild it the way run.py does
        from utils import summarize

        data = config.get("data", {})
        summary = summarize(records, Namespace(**config["args"]), data, data.get("n_items", len(records)))
    else:
        raise ReportError(f"{path}: no summary.json (nor config.json with results.jsonl); give a run directory "
                          "that run.py wrote")
    return Run(path, summary, config, records)


def find_runs(paths: list[str]) -> list[Run]:
    runs = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise ReportError(f"{p}: not a directory; give run directories (or folders holding them)")
        if _is_run(p):
            runs.append(load_run(p))
            continue
        inner = sorted(d for d in p.iterdir() if d.is_dir() and _is_run(d))
        if not inner:
            raise ReportError(f"{p}: neither a run directory (summary.json, results.jsonl) nor a folder of them")
        runs += [load_run(d) for d in inner]
    if not runs:
        raise ReportError("no runs given")
    return runs


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
    return f"{c['kv_policy']} k{c['kv_keep']:g}" + (f" ({', '.join(map(str, extra))})" if extra else "")


def label_runs(runs: list[Run]) -> None:
    """Short labels: method, topology if not sequential, latent steps, compression; made unique within a list."""
    for r in runs:
        parts = [r.method]
        if r.get("prompt") not in (None, "sequential"):
            parts.append(str(r.get("prompt")))
        if r.method == "latent_mas":
            parts.append(f"m{r.get('latent_steps')}")
            if r.compression:
                parts.append(_compression_text(r.compression))
        r.label = " ".join(parts)
    seen = defaultdict(list)
    for r in runs:
        seen[r.label].append(r)
    for same in seen.values():
        if len(same) > 1:
            for r in same:
                r.label += f" [{r.path.name[-15:]}]"


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


def plot_accuracy_vs_kv(groups: list[tuple[str, list[Run]]], out: Path) -> Path | None:
    groups = [(name, [r for r in rs if r.method == "latent_mas" and r.get("kv_bytes_judger_mean") is not None])
              for name, rs in groups]
    groups = [(name, rs) for name, rs in groups if rs]
    if not groups:
        return None
    fig, axes = _figure(len(groups), 1, 8, 4.2)
    mib = 2 ** 20
    for ax, (name, runs) in zip(axes[:, 0], groups):
        compressed = [r for r in runs if r.compression]
        keys = sorted({series_key(r) for r in compressed}, key=str)
        for key in keys:
            pts = sorted((r for r in compressed if series_key(r) == key), key=lambda r: r.compression["kv_keep"])
            xs = [r.get("kv_bytes_judger_mean") / mib for r in pts]
            ys = [r.get("accuracy") or 0.0 for r in pts]
            errs = list(zip(*[_err(r) for r in pts]))
            line = ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=series_label(key, keys))
            for x, y, r in zip(xs, ys, pts):
                ax.annotate(f"k{r.compression['kv_keep']:g}", (x, y), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color=line[0].get_color())
        for r in (r for r in runs if not r.compression):
            acc = r.get("accuracy") or 0.0
            lo, hi = _err(r)
            ax.axhline(acc, color="black", linestyle="--", linewidth=1)
            ax.errorbar([r.get("kv_bytes_judger_mean") / mib], [acc], yerr=[[lo], [hi]], fmt="*", markersize=11,
                        color="black", capsize=3, label=f"uncompressed m{r.get('latent_steps')} (reference)")
        ax.set_xlabel("judger KV cache, MiB (mean over items)")
        ax.set_ylabel("accuracy (95% CI)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    if len(groups) > 1:
        fig.suptitle("different model / task / data source per panel: not comparable across panels", fontsize=9)
    return _save(fig, out / "accuracy_vs_kv.png")


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


def build_report(paths: list[str], out: Path, command: str | None = None) -> dict:
    """Read the runs, write report.md, report.json and the plots to `out`; return what was written."""
    runs = find_runs(paths)
    out.mkdir(parents=True, exist_ok=True)
    grouped = group_runs(runs)
    groups = []
    for i, (key, rs) in enumerate(grouped.items()):
        label_runs(rs)
        groups.append((_group_name(i, key), sorted(rs, key=_method_order)))
    plots = {"accuracy": plot_accuracy(groups, out), "accuracy_vs_kv": plot_accuracy_vs_kv(groups, out),
             "time_tokens": plot_time_tokens(groups, out), "fidelity": plot_fidelity(groups, out)}
    rows = [run_row(name, r) for name, rs in groups for r in rs]
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
    header = ["group", "run", "n", "accuracy [95% CI]", "judger KV tokens", "judger KV MiB", "kept share",
              "time/item s", "gen. tokens/item", "compress s/item", "agreement", "KL"]
    md += _md_table(header, [[
        row["group"].split(":")[0], row["label"], f"{row['n']}" + (" (partial)" if row["complete"] is False else ""),
        f"{_fmt(row['accuracy'], 3)} [{_fmt(row['accuracy_ci95'][0], 2)}, {_fmt(row['accuracy_ci95'][1], 2)}]",
        _fmt(row["kv_tokens_judger_mean"], 1), _fmt(row["kv_bytes_judger_mean"], 2, 2 ** 20),
        _fmt(row["kv_kept_share_judger_mean"], 3), _fmt(row["time_per_sample_s"], 2),
        _fmt(row["generated_tokens_mean"], 1), _fmt(row["compress_time_mean_s"], 4),
        _fmt(row["fidelity_agreement_mean"], 3), _fmt(row["fidelity_kl_mean"], 4)] for row in rows])
    md += ["", "Run directories: " + ", ".join(f"`{row['label']}` = `{row['path']}`" for row in rows)]
    md += ["", "## Per method", ""]
    md += _md_table(["group", "method", "runs", "items", "time/item s", "generated tokens/item"],
                    [[m["group"].split(":")[0], m["method"], str(m["runs"]), str(m["items"]),
                      _fmt(m["time_per_item_s"], 2), _fmt(m["generated_tokens_per_item"], 1)] for m in per_method])
    md += ["", "## Plots", ""]
    captions = {"accuracy": "Accuracy with 95% Wilson interval per run",
                "accuracy_vs_kv": "latent_mas: accuracy vs judger KV cache size (one line per policy, points per keep "
                                  "ratio; the dashed line and star: the uncompressed run)",
                "time_tokens": "Time per item and generated tokens per item",
                "fidelity": "Fidelity of the compressed judger vs keep ratio"}
    for name, path in plots.items():
        md += [f"![{captions[name]}]({path.name})", ""] if path else [f"- {captions[name]}: no runs for this plot", ""]
    (out / "report.md").write_text("\n".join(md) + "\n")
    result = {"groups": [{"name": name, "runs": [r.path.name for r in rs]} for name, rs in groups], "notes": notes,
              "runs": rows, "per_method": per_method, "plots": {k: v.name if v else None for k, v in plots.items()}}
    (out / "report.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="run.py report", description="Markdown table and PNG plots from run directories.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, or folders holding them")
    p.add_argument("--out", default=None, help="output folder (default: reports/<timestamp>)")
    args = p.parse_args(argv)
    out = Path(args.out or Path("reports") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    try:
        result = build_report(args.runs, out, command="python run.py report " + " ".join(argv or sys.argv[1:]))
    except ReportError as e:
        print(f"report: error: {e}", file=sys.stderr)
        return 2
    print(f"[report] {len(result['runs'])} run(s) in {len(result['groups'])} group(s) -> {out / 'report.md'}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
