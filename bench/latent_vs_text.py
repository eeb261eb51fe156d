"""Side-by-side cost of baseline, text_mas and latent_mas on the same items, same model, greedy.

Methods are interleaved batch by batch (baseline, text_mas, latent_mas on batch 0, then in reverse order on batch 1,
...) so drift in machine load falls on all three alike; each batch gives one paired ratio per method pair, and the
table reports their medians next to the totals. Prints a table and writes JSON.

    python bench/latent_vs_text.py --max_samples 20 --max_new_tokens 256 --batch 5 --threads 1
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import items_and_config, machine, median, parser, run_flags, setup, table, write_json  # noqa: E402

from methods import get_method  # noqa: E402
from utils import set_seed, wilson_ci  # noqa: E402

METHODS = ("baseline", "text_mas", "latent_mas")
PAIRS = (("text_mas", "latent_mas"), ("latent_mas", "baseline"), ("text_mas", "baseline"))


def main() -> None:
    p = parser(__doc__)
    run_flags(p, max_samples=20, max_new_tokens=256)
    p.add_argument("--batch", type=int, default=5,
                   help="items per batch (greedy outputs do not depend on it; time per item = batch time / size)")
    p.add_argument("--out", default="bench/results/latent_vs_text.json")
    p.set_defaults(repeats=1, seed=42)
    args = p.parse_args()
    wrapper, model, tok, dev = setup(args)
    items, info, config = items_and_config(args)
    cfg = config()
    set_seed(args.seed)
    rows = {m: [] for m in METHODS}
    batch_times: list[dict[str, float]] = []
    t_start = time.time()
    for b, start in enumerate(range(0, len(items), args.batch)):
        batch = items[start:start + args.batch]
        for r in range(args.repeats):
            times = {}
            for m in (METHODS if (b + r) % 2 == 0 else METHODS[::-1]):
                with torch.inference_mode():
                    recs = get_method(m)(wrapper, batch, cfg)
                times[m] = sum(x["time_s"] for x in recs)
                if r == 0:
                    rows[m] += [{"index": x["index"], "time_s": x["time_s"], "generated_tokens": x["generated_tokens"],
                                 "correct": x["correct"]} for x in recs]
                print(f"items {start}+ repeat {r}: {m} {times[m]:.1f}s", file=sys.stderr, flush=True)
            batch_times.append(times)
    summary, out_rows = {}, []
    for m in METHODS:
        r = rows[m]
        correct = sum(x["correct"] for x in r)
        ci = wilson_ci(correct, len(r))
        summary[m] = {"n": len(r), "correct": correct, "ci95": ci,
                      "time_per_item_s": sum(t[m] for t in batch_times) / (len(r) * args.repeats),
                      "generated_tokens_mean": sum(x["generated_tokens"] for x in r) / len(r)}
        out_rows.append([m, f"{correct}/{len(r)} [{ci[0]:.2f}, {ci[1]:.2f}]", f"{summary[m]['time_per_item_s']:.2f}",
                         f"{summary[m]['generated_tokens_mean']:.1f}"])
    ratios = {f"time {a}/{b}": median([t[a] / t[b] for t in batch_times]) for a, b in PAIRS}
    ratios["tokens text_mas/latent_mas"] = (summary["text_mas"]["generated_tokens_mean"]
                                            / max(summary["latent_mas"]["generated_tokens_mean"], 1e-9))
    info_m = machine(dev)
    print(f"\n{args.model_name} on {args.task} (first {len(items)}, {info['source']}), greedy, max_new_tokens "
          f"{args.max_new_tokens}, latent_steps {args.latent_steps}, batches of {args.batch}, {args.repeats} "
          f"repeat(s), device {dev}, {info_m['torch_threads']} torch thread(s), {info_m.get('cpu', '')}")
    print(table(["method", "accuracy (95% CI)", "time per item s", "generated tokens per item"], out_rows))
    print(f"\nmedians of {len(batch_times)} paired batch ratios: "
          + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    write_json(args.out, {"args": vars(args), "data": info, "machine": info_m, "table": summary, "ratios": ratios,
                          "batch_times": batch_times, "rows": rows, "wall_s": time.time() - t_start})


if __name__ == "__main__":
    main()
