"""Time and KV per agent and per model of a team of two models, beside the one-model team, side by side.

The shipped sequential team runs on --model_name alone and with its last agent on --second (planner, critic and
refiner stay on --model_name): latent_mas with the text hand-off (the refiner writes), latent_mas with
--cross_model latent-map, text_mas one-model and mixed. The five configurations are interleaved item by item (the
order reversed on every other item), so drift in machine load falls on all alike; greedy. Prints per configuration
each agent's mean time and KV (the cache it leaves: kv_*_out) and each model's, and writes JSON.

    python bench/mixed_teams.py --second PATH_OR_HUB_ID --max_samples 4 --max_new_tokens 32 --latent_steps 4 --threads 1
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import items_and_config, machine, parser, run_flags, setup, table, write_json  # noqa: E402

from methods import get_method  # noqa: E402
from models import ModelWrapper, load_model, team_models  # noqa: E402
from rundir import per_model  # noqa: E402
from teams import default_team, parse_team  # noqa: E402

CONFIGS = (("latent_mas", "one", "text"), ("latent_mas", "mixed", "text"), ("latent_mas", "mixed", "latent-map"),
           ("text_mas", "one", "text"), ("text_mas", "mixed", "text"))


def main() -> None:
    p = parser(__doc__)
    run_flags(p, max_samples=4, max_new_tokens=32)
    p.add_argument("--second", required=True, help="the last agent's model in the mixed team (same tokenizer for "
                   "the latent-map configuration)")
    p.add_argument("--out", default="bench/results/mixed_teams.json")
    p.set_defaults(latent_steps=4, seed=42)
    args = p.parse_args()
    first, _, _, dev = setup(args)
    second = ModelWrapper(*load_model(args.second, args.device, args.dtype))
    wrappers = {args.model_name: first, args.second: second}
    items, info, config = items_and_config(args)
    raw = default_team("sequential").as_dict()
    raw["agents"][-1]["model"] = args.second
    mixed = parse_team(raw, "sequential, last agent on --second")
    runs = {}
    for method, team_kind, cross in CONFIGS:
        team = mixed if team_kind == "mixed" else default_team("sequential")
        models, team, notices = team_models(team, args.model_name, wrappers.__getitem__, "chain", cross, method,
                                            log=lambda line: print(line, file=sys.stderr))
        runs[(method, team_kind, cross)] = (config(team=team, models=models, model_name=args.model_name), [])
    t0 = time.time()
    for i, item in enumerate(items):
        for key in (CONFIGS if i % 2 == 0 else CONFIGS[::-1]):
            cfg, recs = runs[key]
            with torch.inference_mode():
                recs += get_method(key[0])(first, [item], cfg)
            print(f"item {i}: {' '.join(key)} {recs[-1]['time_s']:.1f}s", file=sys.stderr, flush=True)
    out = []
    for key, (_, recs) in runs.items():
        n = len(recs)
        agents = [{"name": a["name"], "model": a["model"],
                   "time_s": sum(r["agents"][k]["time_s"] for r in recs) / n,
                   "kv_tokens_out": sum(r["agents"][k]["kv_tokens_out"] for r in recs) / n,
                   "kv_bytes_out": sum(r["agents"][k]["kv_bytes_out"] for r in recs) / n}
                  for k, a in enumerate(recs[0]["agents"])]
        out.append({"method": key[0], "team": key[1], "cross_model": key[2], "items": n,
                    "time_per_item_s": sum(r["time_s"] for r in recs) / n, "agents": agents,
                    "models": per_model(recs)})
    for o in out:
        print(f"\n{o['method']}, {o['team']} team" + (f", --cross_model {o['cross_model']}" if o["team"] == "mixed"
                                                      else "") + f": {o['time_per_item_s']:.2f} s per item")
        print(table(["agent", "model", "time s", "KV out tokens", "KV out MiB"],
                    [[a["name"], Path(a["model"]).name, f"{a['time_s']:.2f}", f"{a['kv_tokens_out']:.1f}",
                      f"{a['kv_bytes_out'] / 2**20:.2f}"] for a in o["agents"]]))
        print(table(["model", "agents", "time s / item", "KV max tokens", "KV max MiB"],
                    [[Path(m).name, ", ".join(v["agents"]), f"{v['time_s']:.2f}", f"{v['kv_tokens_max_mean']:.1f}",
                      f"{v['kv_bytes_max_mean'] / 2**20:.2f}"] for m, v in o["models"].items()]))
    write_json(args.out, {"args": vars(args), "data": info, "machine": machine(dev), "wall_s": time.time() - t0,
                          "runs": out})


if __name__ == "__main__":
    main()
