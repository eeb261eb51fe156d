"""Batching: items per second at several --generate_bs on the same items, greedy, in one process, with repeats and
medians, checking that every batch size gives the same outputs as batch size 1.

Each repeat runs the whole item list once per batch size (the order of batch sizes alternates between repeats, so
drift in machine load falls on all of them alike). Wall time covers the method's run_batch calls only (grading of
non-code answers included, as in a run; model and data loading excluded).

    python bench/batching.py --method latent_mas --max_samples 16 --batch_sizes 1 4 8 16 --max_new_tokens 64
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import clock, items_and_config, machine, median, parser, run_flags, setup, table, write_json  # noqa: E402

from methods import get_method  # noqa: E402
from registry import METHODS  # noqa: E402


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--method", default="latent_mas", choices=list(METHODS))
    run_flags(p, max_samples=16, max_new_tokens=64)
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--out", default="bench/results/batching.json")
    p.set_defaults(repeats=2)
    args = p.parse_args()
    wrapper, model, tok, dev = setup(args)
    items, info, config = items_and_config(args)
    cfg = config()
    run_batch = get_method(args.method)
    sizes = sorted(set(args.batch_sizes))
    walls = {bs: [] for bs in sizes}
    outputs: dict[int, dict[int, str]] = {}
    tokens: dict[int, int] = {}
    t_start = time.time()
    with torch.inference_mode():
        run_batch(wrapper, items[:1], cfg)  # warm-up
        for r in range(args.repeats):
            for bs in (sizes if r % 2 == 0 else sizes[::-1]):
                t0 = clock(dev)
                recs = [rec for s in range(0, len(items), bs) for rec in run_batch(wrapper, items[s:s + bs], cfg)]
                walls[bs].append(clock(dev) - t0)
                outputs.setdefault(bs, {rec["index"]: rec["output"] for rec in recs})
                tokens.setdefault(bs, sum(rec["generated_tokens"] for rec in recs))
                print(f"repeat {r} bs {bs}: {walls[bs][-1]:.1f}s ({time.time() - t_start:.0f}s so far)",
                      file=sys.stderr, flush=True)
    ref = outputs[sizes[0]]
    base = len(items) / median(walls[sizes[0]])
    rows, results = [], {}
    for bs in sizes:
        w = median(walls[bs])
        same = sum(outputs[bs][i] == ref[i] for i in ref)
        results[bs] = {"wall_median_s": w, "wall_s": walls[bs], "items_per_s": len(items) / w,
                       "speedup_vs_first": len(items) / w / base, "same_outputs": same, "n": len(items),
                       "generated_tokens": tokens[bs]}
        rows.append([bs, f"{w:.1f}", f"{len(items) / w:.3f}", f"{len(items) / w / base:.2f}x",
                     f"{same}/{len(items)}", tokens[bs]])
    info_m = machine(dev)
    print(f"\n{args.model_name}, {args.method} on {args.task} (first {len(items)}, {info['source']}), greedy, "
          f"max_new_tokens {args.max_new_tokens}, latent_steps {args.latent_steps}, {args.repeats} repeats (median), "
          f"device {dev}, {info_m['torch_threads']} torch thread(s), {info_m.get('cpu', info_m['processor'])}")
    print(table(["generate_bs", "wall s", "items/s", f"vs bs {sizes[0]}", f"same outputs as bs {sizes[0]}",
                 "generated tokens"], rows))
    write_json(args.out, {"args": vars(args), "data": info, "machine": info_m, "results": results,
                          "wall_s": time.time() - t_start})


if __name__ == "__main__":
    main()
