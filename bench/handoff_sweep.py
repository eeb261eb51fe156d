"""The field's hand-off methods at matched KV-byte budgets, on the same items, against the uncompressed team.

Every setting compresses once, before the judger (--compress_at judger), so the judger's KV bytes are the budget's
share of the uncompressed hand-off: token eviction at keep p holds p, KVComm at a share s of layers holds
ceil(s * layers) / layers, int8 / int4 hold kvquant.held_share of the model's precision (fp32 on CPU: 0.31 / 0.19 at
group 32, so at the 50 % budget they come in under it), and compositions multiply. Per batch the uncompressed team
runs once (the reference, as in compression_sweep.py), then every setting is scored against it.

    python bench/handoff_sweep.py --max_samples 20 --max_new_tokens 16 --batch 20 --out bench/results/handoff_sweep.json

`--compress_at every` compresses before every agent that inherits the cache instead (budgets then compound: the
column is not the judger's share). `--requantized` also runs every quantized setting the way hand-offs worked before
codes were kept (every held entry dequantized and quantized again in new groups at each hand-off), labelled
"... (requantized)", so both sit side by side on the same items:

    python bench/handoff_sweep.py --compress_at every --requantized --only int8 int4 "streaming k0.8 + int8"
"""
from __future__ import annotations

import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import items_and_config, parser, run_flags, save, setup, table  # noqa: E402

import kv_state  # noqa: E402
from compression import Compressor  # noqa: E402
from config import CompressionConfig  # noqa: E402
from methods import latent_mas  # noqa: E402
from utils import set_seed, wilson_ci  # noqa: E402

# (label, budget, compression settings); the budget is the share of the uncompressed judger hand-off on an fp32 cache
SETTINGS = [  # the most telling first: an interrupted sweep keeps every setting it finished
    ("none", 1.0, None),
    ("kvcomm 0.5 layers", 0.5, dict(kv_policy="kvcomm", kv_keep=0.5)),
    ("int8", 0.5, dict(kv_policy="none", kv_quant="int8")),
    ("streaming k0.5", 0.5, dict(kv_policy="streaming", kv_keep=0.5)),
    ("kvcomm 0.25 layers", 0.25, dict(kv_policy="kvcomm", kv_keep=0.25)),
    ("int4", 0.25, dict(kv_policy="none", kv_quant="int4")),
    ("streaming k0.25", 0.25, dict(kv_policy="streaming", kv_keep=0.25)),
    ("int8 + kvcomm 0.8 layers", 0.25, dict(kv_policy="none", kv_layers=0.8, kv_quant="int8")),
    ("knorm k0.5", 0.5, dict(kv_policy="knorm", kv_keep=0.5)),
    ("knorm k0.25", 0.25, dict(kv_policy="knorm", kv_keep=0.25)),
    ("streaming k0.8 + int8", 0.25, dict(kv_policy="streaming", kv_keep=0.8, kv_quant="int8")),
]


@contextmanager
def requantized():
    """Hand-offs as they were before held codes were kept: every quantization forms new groups over every entry the
    layer holds (kvquant.requantize told that nothing is held as codes quantizes everything)."""
    keep = kv_state.requantize

    def anew(codes, *args):
        return keep(None, *args)

    kv_state.requantize = anew
    try:
        yield
    finally:
        kv_state.requantize = keep


def main() -> None:
    p = parser(__doc__)
    run_flags(p, max_samples=20, max_new_tokens=16)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--only", nargs="*", default=None, help="labels to run (default: all)")
    p.add_argument("--out", default="bench/results/handoff_sweep.json")
    p.add_argument("--compress_at", default="judger", choices=("judger", "every"))
    p.add_argument("--requantized", action="store_true",
                   help="also run each quantized setting with every held entry quantized again at each hand-off")
    p.set_defaults(seed=42)
    args = p.parse_args()
    wrapper, model, tok, dev = setup(args)
    items, info, config = items_and_config(args)
    set_seed(args.seed)
    runs = [s for s in SETTINGS if args.only is None or s[0] in args.only or s[0] == "none"]
    if args.requantized:
        runs = [r for label, budget, kw in runs
                for r in [(label, budget, kw)] + ([(f"{label} (requantized)", budget, kw)]
                                                  if kw and kw.get("kv_quant") else [])]
    rows: dict[str, list[dict]] = {label: [] for label, *_ in runs}
    t_start = time.time()
    for start in range(0, len(items), args.batch):
        batch = items[start:start + args.batch]
        with torch.inference_mode():
            ref = latent_mas.reference(wrapper, batch, config())
            for label, _, kw in runs:
                comp = None if kw is None else Compressor(CompressionConfig(**kw, compress_at=args.compress_at))
                t_set = time.time()
                with requantized() if label.endswith("(requantized)") else nullcontext():
                    results = latent_mas.run_batch(wrapper, batch, config(compressor=comp), ref=ref)
                for r in results:
                    judger = r["agents"][-1]
                    rows[label].append({"index": r["index"], "correct": r["correct"],
                                        "kv_bytes_judger": judger["kv_bytes_in"],
                                        "compress_s": sum(a.get("compress_time_s", 0) for a in r["agents"]),
                                        "agreement": r["fidelity"]["agreement"], "kl": r["fidelity"]["kl"],
                                        "output_match": r["fidelity"]["output_match"]})
                print(f"  {label}: {time.time() - t_set:.0f}s", file=sys.stderr, flush=True)
                save(args, info, dev, summarize(runs, rows), rows, t_start)
        print(f"items {start}-{start + len(batch) - 1} done, {time.time() - t_start:.0f}s", file=sys.stderr,
              flush=True)
    summary = summarize(runs, rows)
    full = summary["none"]["kv_bytes_judger_mean"]
    print(f"\n{args.model_name} on {args.task} (first {len(items)}, {info['source']}), latent_mas, greedy, "
          f"max_new_tokens {args.max_new_tokens}, latent_steps {args.latent_steps}, compress at {args.compress_at}, "
          f"device {dev}, batch {args.batch}")
    print(table(["setting", "budget", "judger KV MiB", "share of full", "compress s/item", "agreement", "KL",
                 "same output", "accuracy (95% CI)"],
                [[label, f"{t['budget']:g}", f"{t['kv_bytes_judger_mean'] / 2**20:.2f}",
                  f"{t['kv_bytes_judger_mean'] / full:.3f}", f"{t['compress_s_mean']:.3f}",
                  f"{t['agreement_mean']:.3f}", f"{t['kl_mean']:.3f}", f"{t['output_match_mean']:.2f}",
                  f"{t['correct']}/{t['n']} [{t['ci95'][0]:.2f}, {t['ci95'][1]:.2f}]"]
                 for label, t in summary.items()]))
    save(args, info, dev, summary, rows, t_start)


def summarize(runs, rows) -> dict:
    out = {}
    for label, budget, kw in runs:
        r = rows[label]
        if r:
            correct = sum(x["correct"] for x in r)
            out[label] = {"budget": budget, "settings": kw, "n": len(r), "correct": correct,
                          "ci95": wilson_ci(correct, len(r)),
                          **{f"{k}_mean": statistics.mean(x[k] for x in r)
                             for k in ("kv_bytes_judger", "compress_s", "agreement", "kl", "output_match")}}
    return out


if __name__ == "__main__":
    main()
