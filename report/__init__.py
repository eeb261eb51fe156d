"""Reports over run directories: one Markdown table and PNG plots.

    python run.py report RUN_DIR... [--out DIR]

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
Runs are grouped by team composition (the model, or each model with its agents), task and data source. Accuracies of
different groups are never drawn on one axis: every plot has one panel per group, and the report names the groups
and says that they are not comparable.
A run whose settings match a published number (config/paper/published.yaml, `--published FILE`) gets it in the Runs
table's "paper" column (`published_for`).

One module per job: runs.py reads and groups the runs (typed, from rundir.read_run), tables.py computes the rows,
seeds, pairs, published matches and notes, plots.py draws, markdown.py writes report.md section by section; this
file wires them (build_report) and holds the command.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from pathlib import Path

import stats
from report import markdown, plots, tables
from report.runs import ReportError, find_baseline, find_runs, group_name, group_runs, label_runs, method_order

__all__ = ["ReportError", "add_arguments", "build_report", "command"]


def build_report(paths: list[str], out: Path, command: str | None = None, baseline: str | None = None,
                 published: Path | None = tables.PUBLISHED) -> dict:
    """Read the runs, write report.md, report.json and the plots to `out`; return what was written. `baseline`: a run
    directory every run is paired with (default: each run's reference, see tables.reference_for). `published`: the
    published-numbers file (None: no "paper" column)."""
    papers = tables.load_published(published)
    runs = find_runs(paths)
    base = find_baseline(runs, baseline)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"--out {out}: cannot create it ({e.strerror}); give a writable folder") from None
    groups = []
    for i, (key, rs) in enumerate(group_runs(runs).items()):
        label_runs(rs)
        groups.append((group_name(i, key), sorted(rs, key=method_order)))
    pairs, not_paired = tables.pair_rows(groups, base)
    seeds = [row for name, rs in groups for row in tables.seed_rows(name, rs)]
    drawn = plots.draw_all(groups, pairs, out)
    rows = [tables.run_row(name, r) for name, rs in groups for r in rs]
    for row, r in zip(rows, (r for _, rs in groups for r in rs)):
        row["published"] = [{"accuracy": p["accuracy"], "n": p["n"], "source": p["source"]}
                            for p in tables.published_for(r, papers)]
    per_method = [m for name, rs in groups for m in tables.method_rows(name, rs)]
    notes = tables.notes(groups)
    md = (markdown.header(len(runs), command) + markdown.groups_section(groups, notes)
          + markdown.runs_section(rows, papers) + markdown.seeds_markdown(seeds)
          + markdown.paired_markdown(pairs, not_paired, base) + markdown.per_method_section(per_method)
          + markdown.plots_section(drawn))
    (out / "report.md").write_text("\n".join(md) + "\n")
    result = {"groups": [{"name": name, "runs": [r.path.name for r in rs]} for name, rs in groups], "notes": notes,
              "runs": rows, "per_method": per_method, "seeds": seeds, "paired": pairs, "not_paired": not_paired,
              "paired_method": {"difference_ci": f"paired bootstrap percentile interval, {stats.BOOTSTRAP_RESAMPLES} "
                                                 f"item resamples, seed {stats.BOOTSTRAP_SEED}",
                                "test": "exact McNemar (two-sided binomial on the discordant items)"},
              "plots": {k: v.name if v else None for k, v in drawn.items()}}
    (out / "report.json").write_text(json.dumps(result, indent=2))
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "Markdown table and PNG plots from run directories."
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, or folders holding them")
    p.add_argument("--out", default=None, help="output folder (default: reports/<timestamp>)")
    p.add_argument("--published", default=str(tables.PUBLISHED), metavar="FILE",
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
