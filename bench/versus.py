"""This checkout against an earlier git revision on the same run: time per item and greedy outputs, side by side.

The revision is checked out once into a temporary git worktree; then the same `run.py` command runs there and here,
alternating which goes first, `--repeats` times, each in a fresh process with one torch thread. Reported: the
median of the paired ratios of `time_per_sample_s` (this / earlier), start-up to the first item (wall time minus
the run's own time), and whether every output is identical.

    python bench/versus.py --rev 233d6fd --repeats 3 -- --method latent_mas --max_samples 5 --generate_bs 1 \\
        --max_new_tokens 64 --temperature 0
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_once(checkout: Path, flags: list[str], out: Path) -> tuple[dict, list[str], float]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "run.py", *flags, "--output_dir", str(out)], cwd=checkout, env=env, check=True,
                   capture_output=True)
    wall = time.perf_counter() - t0
    run_dir = next(out.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    outputs = [json.loads(line)["output"] for line in (run_dir / "results.jsonl").read_text().splitlines() if line]
    return summary, outputs, wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", required=True, help="the earlier revision")
    p.add_argument("--this_rev", default=None, help="compare this revision instead of the working tree")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("flags", nargs=argparse.REMAINDER, help="run.py flags, after --")
    args = p.parse_args()
    flags = [f for f in args.flags if f != "--"]
    tmp = Path(tempfile.mkdtemp())
    old = tmp / "old"
    this = tmp / "this" if args.this_rev else ROOT
    for path, rev in ((old, args.rev), (this, args.this_rev)):
        if rev:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev], check=True,
                           capture_output=True)
    ratios, startup, same = [], {"this": [], "earlier": []}, True
    try:
        for r in range(args.repeats):
            order = [("this", this), ("earlier", old)]
            got = {}
            for name, checkout in (order if r % 2 == 0 else order[::-1]):
                summary, outputs, wall = run_once(checkout, flags, tmp / f"{name}{r}")
                got[name] = (summary, outputs)
                startup[name].append(wall - summary["time_total_s"])
            ratios.append(got["this"][0]["time_per_sample_s"] / got["earlier"][0]["time_per_sample_s"])
            same = same and got["this"][1] == got["earlier"][1]
            print(f"repeat {r}: this {got['this'][0]['time_per_sample_s']:.2f} s/item, earlier "
                  f"{got['earlier'][0]['time_per_sample_s']:.2f} s/item, ratio {ratios[-1]:.3f}", file=sys.stderr)
    finally:
        for path in {old, this} - {ROOT}:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], capture_output=True)
    print(f"time per item, this / {args.rev}: median of {len(ratios)} paired ratios {statistics.median(ratios):.3f} "
          f"(all: {', '.join(f'{x:.3f}' for x in ratios)})")
    print(f"wall time outside the run's own timing (start-up, loading, writing): this "
          f"{statistics.median(startup['this']):.1f} s, earlier {statistics.median(startup['earlier']):.1f} s")
    print(f"outputs identical: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
