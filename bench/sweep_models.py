"""A sweep whose cells run a team of two models: this checkout against an earlier git revision, side by side.

The sequential team with its judger on a second model (`--second`; default: a random 2-layer Llama, hidden 96,
with the embedded SmolLM2's tokenizer, built here offline, as the mixed-teams acceptance check does) and every
sender latent, so the refiner's latents reach the judger through `--cross_model latent-map`; `--cells` seeds, one
cell each. The same `run.py sweep` runs in this checkout and at `--rev` (a temporary git worktree), alternating
which goes first, `--repeats` times, each a fresh process with one torch thread. Reported per side: the sweep's wall
time, the models.load_model calls (by model) and LatentMap.build calls (counted by a hook around run.main), and
whether the cells' outputs are identical.

    python bench/sweep_models.py --rev e79b036 --cells 3 --repeats 2
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

# run.py sweep under a hook that counts model loads and latent-map builds (works at any revision that has them)
HOOK = """
import atexit, collections, json, sys
import models, latent_map
loads, maps = collections.Counter(), [0]
real_load, real_map = models.load_model, latent_map.LatentMap.build.__func__
def load(name, *a, **k):
    loads[name] += 1
    return real_load(name, *a, **k)
def build(cls, *a, **k):
    maps[0] += 1
    return real_map(cls, *a, **k)
models.load_model, latent_map.LatentMap.build = load, classmethod(build)
atexit.register(lambda: print("COUNTS " + json.dumps({"loads": loads, "maps": maps[0]}), file=sys.stderr))
import run
sys.exit(run.main(sys.argv[1:]))
"""


def tiny_second(folder: Path) -> str:
    """A random 2-layer Llama with SmolLM2's tokenizer (one tokenizer: the latent map applies)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    import models

    tok = AutoTokenizer.from_pretrained(models.resolve_model_path("smollm2-135m"))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=96, intermediate_size=192, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def sweep_file(tmp: Path, second: str, cells: int, args) -> Path:
    team = json.loads((ROOT / "teams" / "sequential.json").read_text())
    team["agents"][-1]["model"] = second
    (tmp / "team.json").write_text(json.dumps(team))
    f = tmp / "sweep.yaml"
    f.write_text(json.dumps({"method": "latent_mas", "model_name": args.model_name, "device": "cpu",
                             "dtype": "float32", "task": "gsm8k", "max_samples": args.max_samples,
                             "max_new_tokens": args.max_new_tokens, "latent_steps": args.latent_steps,
                             "temperature": 0, "agents": str(tmp / "team.json"), "cross_model": "latent-map",
                             "seed": list(range(1, cells + 1))}))
    return f


def run_once(checkout: Path, file: Path, out: Path) -> tuple[float, dict, dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(checkout))
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", HOOK, "sweep", str(file), "--output_dir", str(out)], cwd=checkout,
                       env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{checkout}: exit {p.returncode}: {p.stderr.strip().splitlines()[-1:]}")
    counts = json.loads(next(ln for ln in p.stderr.splitlines() if ln.startswith("COUNTS "))[7:])
    outputs = {d.name: [json.loads(x)["output"] for x in (d / "results.jsonl").read_text().splitlines() if x]
               for d in sorted(out.iterdir()) if (d / "results.jsonl").exists()}
    return wall, counts, outputs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", required=True, help="the earlier revision")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cells", type=int, default=3)
    p.add_argument("--second", default=None, help="the judger's model (default: the tiny random Llama built here)")
    p.add_argument("--model_name", default="smollm2-135m")
    p.add_argument("--max_samples", type=int, default=1)
    p.add_argument("--max_new_tokens", type=int, default=8)
    p.add_argument("--latent_steps", type=int, default=2)
    p.add_argument("--out", default="bench/results/sweep_models.json")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp())
    second = args.second or tiny_second(tmp / "tiny")
    file = sweep_file(tmp, second, args.cells, args)
    old = tmp / "old"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.rev], check=True,
                   capture_output=True)
    walls, counts, same = {"this": [], "earlier": []}, {}, True
    try:
        for r in range(args.repeats):
            got = {}
            order = [("this", ROOT), ("earlier", old)]
            for name, checkout in (order if r % 2 == 0 else order[::-1]):
                wall, counts[name], outputs = run_once(checkout, file, tmp / f"{name}{r}")
                walls[name].append(wall)
                got[name] = outputs
                print(f"repeat {r}: {name} {wall:.1f} s, {counts[name]}", file=sys.stderr, flush=True)
            same = same and got["this"] == got["earlier"] and len(got["this"]) == args.cells
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], capture_output=True)
    ratio = statistics.median(t / e for t, e in zip(walls["this"], walls["earlier"]))
    for name in ("earlier", "this"):
        print(f"{name:>8}: sweep wall time {', '.join(f'{w:.1f}' for w in walls[name])} s; loads "
              f"{dict(counts[name]['loads'])}; latent maps built {counts[name]['maps']}")
    print(f"wall time this / {args.rev}: median of {args.repeats} paired ratios {ratio:.3f}; "
          f"outputs identical: {'yes' if same else 'NO'}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "walls": walls, "counts": counts, "ratio": ratio,
                                          "identical": same}, indent=1))


if __name__ == "__main__":
    main()
