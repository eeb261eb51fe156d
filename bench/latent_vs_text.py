"""Side-by-side cost of baseline, text_mas and latent_mas on the same items, same model, greedy.

Methods are interleaved batch by batch (baseline, text_mas, latent_mas on batch 0, then batch 1, ...) so machine
noise falls on all three alike. Prints a table and writes JSON.

    python bench/latent_vs_text.py --max_samples 20 --max_new_tokens 256 --out bench/results/latent_vs_text.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import load_task  # noqa: E402
from methods import MethodConfig, get_method  # noqa: E402
from models import ModelWrapper, load_model  # noqa: E402
from registry import DEFAULT_MODEL, TASKS  # noqa: E402
from utils import set_seed, wilson_ci  # noqa: E402

METHODS = ("baseline", "text_mas", "latent_mas")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_name", default=DEFAULT_MODEL)
    p.add_argument("--task", default="gsm8k", choices=list(TASKS))
    p.add_argument("--max_samples", type=int, default=20)
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--latent_steps", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--batch", type=int, default=1,
                   help="items per batch (greedy outputs do not depend on it; time per item = batch time / size)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default="bench/results/latent_vs_text.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    items, info = load_task(args.task, max_samples=args.max_samples)
    model, tok, dev = load_model(args.model_name, args.device, args.dtype)
    wrapper = ModelWrapper(model, tok, dev)
    cfg = MethodConfig(answer_type=TASKS[args.task].answer_type, max_new_tokens=args.max_new_tokens,
                       temperature=0.0, top_p=1.0, seed=42, latent_steps=args.latent_steps)
    set_seed(42)
    rows = {m: [] for m in METHODS}
    t_start = time.time()
    for start in range(0, len(items), args.batch):
        batch = items[start:start + args.batch]
        for m in METHODS:
            with torch.inference_mode():
                recs = get_method(m)(wrapper, batch, cfg)
            rows[m] += [{"index": r["index"], "time_s": r["time_s"], "generated_tokens": r["generated_tokens"],
                         "correct": r["correct"]} for r in recs]
            print(f"items {start}+: {m} {sum(r['time_s'] for r in recs):.1f}s", file=sys.stderr, flush=True)
    table = {}
    for m in METHODS:
        r = rows[m]
        correct = sum(x["correct"] for x in r)
        table[m] = {"n": len(r), "correct": correct, "accuracy": correct / len(r), "ci95": wilson_ci(correct, len(r)),
                    "time_per_item_median_s": statistics.median(x["time_s"] for x in r),
                    "time_per_item_mean_s": statistics.mean(x["time_s"] for x in r),
                    "generated_tokens_mean": statistics.mean(x["generated_tokens"] for x in r)}
    lat, txt = table["latent_mas"], table["text_mas"]
    ratios = {"time_text_over_latent": txt["time_per_item_mean_s"] / lat["time_per_item_mean_s"],
              "tokens_text_over_latent": txt["generated_tokens_mean"] / max(lat["generated_tokens_mean"], 1e-9),
              "time_latent_over_baseline": lat["time_per_item_mean_s"] / table["baseline"]["time_per_item_mean_s"]}
    print(f"\n{args.model_name} on {args.task} (first {len(items)}, {info['source']}), greedy, "
          f"max_new_tokens {args.max_new_tokens}, latent_steps {args.latent_steps}, device {dev}, batch {args.batch}")
    print("| method | accuracy (95% CI) | time/item mean (median) s | generated tokens mean |")
    print("|---|---|---|---|")
    for m in METHODS:
        t = table[m]
        ci = f"[{t['ci95'][0]:.2f}, {t['ci95'][1]:.2f}]"
        times = f"{t['time_per_item_mean_s']:.1f} ({t['time_per_item_median_s']:.1f})"
        print(f"| {m} | {t['correct']}/{t['n']} {ci} | {times} | {t['generated_tokens_mean']:.1f} |")
    print("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "data": info, "device": str(dev), "table": table,
                               "ratios": ratios, "rows": rows, "wall_s": time.time() - t_start}, indent=2))


if __name__ == "__main__":
    main()
