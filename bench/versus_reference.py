"""Token by token against the reference code: the same items, this harness (imported teams) vs the reference's methods.

One command runs, per method, this harness (`run.py --trace --temperature 0`, the team imported from the checkout)
and then the reference's own method classes on the same question strings, in the reference's Python (transformers
4.57), and compares per item and agent the input token ids and the generated token ids. It prints one table row per
method and item: identical, or the first differing agent and token.

    python bench/versus_reference.py --ref /tmp/ref/knn --ref_python /tmp/refvenv/bin/python \\
        --out /tmp/versus-ref --task gsm8k --items 5

`--prompt_file FILE` (a Science-LatentMAS checkout) imports the teams with that file (import-team --prompt_file)
and hands it to the reference's methods as its run.py does (--custom_prompt_file).

What the reference side needs (docs/reproduce.md, section 6): a model folder whose name contains "Qwen" and whose
config.json holds `rope_theta` (4.57 ignores transformers 5's `rope_parameters`): the script builds one under OUT
from the embedded model's cached folder. The reference always samples: it runs at `--ref_temperature` (1e-7; at
1e-5 a near tie, two logits 2e-6 apart, was once a coin flip there).
Batch size 1 on both sides. Work already done under OUT is kept (this harness's runs continue with --run_dir, the
reference's items are one file each), so an interrupted comparison continues with the same command.

The reference side is this same file run by the reference's Python with `--ref_side`; it imports nothing of this
harness.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# label -> (reference method, this harness's extra flags, reference kNN switch)
METHODS = {
    "baseline": ("baseline", [], False),
    "text_mas": ("text_mas", [], False),
    "latent_mas": ("latent_mas", [], False),
    "knn-top": ("latent_mas", ["--kv_policy", "knn-top", "--kv_min_keep", "5", "--kv_positions", "shift"], True),
}


def qwen_model_folder(model_name: str, out: Path) -> Path:
    """A folder the 4.57 reference reads: "Qwen" in its name, rope_theta in its config, a 4.x tokenizer class."""
    sys.path.insert(0, str(ROOT))
    from models import resolve_model_path

    source = Path(resolve_model_path(model_name))
    target = out / f"Qwen-{source.name}"
    target.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.name not in ("config.json", "tokenizer_config.json") and not (target / f.name).exists():
            (target / f.name).symlink_to(f.resolve())
    config = json.loads((source / "config.json").read_text())
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope:
        config.setdefault("rope_theta", rope["rope_theta"])
    config.setdefault("torch_dtype", config.get("dtype", "float32"))
    (target / "config.json").write_text(json.dumps(config, indent=1))
    tok = json.loads((source / "tokenizer_config.json").read_text())
    if tok.get("tokenizer_class") == "TokenizersBackend":  # the 5.x name; 4.57 knows the fast class
        tok["tokenizer_class"] = "PreTrainedTokenizerFast"
    (target / "tokenizer_config.json").write_text(json.dumps(tok, indent=1))
    return target


def team_path(teams: Path, label: str, task: str) -> Path:
    return teams / (f"baseline_{task}.yaml" if label == "baseline" else f"sequential_{task}.yaml")


def run_ours(a: argparse.Namespace, label: str, teams: Path) -> Path:
    run_dir = a.out / "ours" / f"{label}_{a.task}"
    method, extra, _ = METHODS[label]
    flags = ["--method", method, "--task", a.task, "--agents", str(team_path(teams, label, a.task)),
             "--model_name", a.model_name, "--max_samples", str(a.items), "--max_new_tokens", str(a.max_new_tokens),
             "--temperature", "0", "--generate_bs", "1", "--trace", "--question_format", a.question_format,
             "--run_dir", str(run_dir), *extra]
    if method == "latent_mas":
        flags += ["--latent_steps", str(a.latent_steps)]
    if label == "knn-top":
        flags += ["--kv_keep", str(a.knn_keep)]
    done = run_dir / "results.jsonl"
    if not (done.exists() and len(done.read_text().splitlines()) >= a.items):
        print("ours:", " ".join(["python", "run.py", *flags]), file=sys.stderr)
        subprocess.run([sys.executable, "run.py", *flags], cwd=ROOT, env=_env(), check=True)
    return run_dir


def run_reference(a: argparse.Namespace, label: str, model_dir: Path, ours: list[dict]) -> Path:
    folder = a.out / "ref" / f"{label}_{a.task}"
    folder.mkdir(parents=True, exist_ok=True)
    todo = [r for r in ours if not (folder / f"{r['index']}.json").exists()]
    if todo:
        questions = folder / "questions.json"
        questions.write_text(json.dumps([{"index": r["index"], "question": r["question"]} for r in todo]))
        method, _, knn = METHODS[label]
        cmd = [a.ref_python, str(Path(__file__).resolve()), "--ref_side", "--ref", str(a.ref), "--model_dir",
               str(model_dir), "--ref_method", method, "--task", a.task, "--questions", str(questions),
               "--out", str(folder), "--max_new_tokens", str(a.max_new_tokens), "--latent_steps", str(a.latent_steps),
               "--ref_temperature", str(a.ref_temperature), "--knn_keep", str(a.knn_keep)]
        if knn:
            cmd.append("--knn")
        print("reference:", " ".join(cmd), file=sys.stderr)
        if a.prompt_file:
            cmd += ["--prompt_file", str(a.prompt_file)]
        subprocess.run(cmd, env=_env(), check=True)
    return folder


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), HF_HUB_OFFLINE="1",
                HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


def _strip(ids: list[int], stop: set[int]) -> list[int]:
    """Generated ids up to the first stop token (one side may keep it, the other not)."""
    for i, t in enumerate(ids):
        if t in stop:
            return ids[:i]
    return ids


class LogitGap:
    """Why a generated token differs, for agents that generate from their prompt alone (baseline, text_mas): the
    two tokens' logits after the common prefix, stepped through a cache as generate does (this harness's
    transformers, float32). A gap near the reference's temperature makes its pick a coin flip."""

    def __init__(self, model_dir: Path):
        self.model_dir, self.model = model_dir, None

    def __call__(self, prompt: list[int], prefix: list[int], here: int, there: int) -> tuple[float, float]:
        import torch
        from transformers import AutoModelForCausalLM

        if self.model is None:
            self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32).eval()
        with torch.no_grad():
            out = self.model(torch.tensor([prompt]), use_cache=True)
            for t in prefix:
                out = self.model(torch.tensor([[t]]), past_key_values=out.past_key_values, use_cache=True)
        logits = out.logits[0, -1]
        return logits[here].item(), logits[there].item()


def compare_item(ours: dict, ref: dict, stop: set[int], decode, gap=None, temperature: float = 0.0) -> str:
    if len(ours["agents"]) != len(ref["agents"]):
        return f"{len(ours['agents'])} agents here, {len(ref['agents'])} in the reference"
    for o, r in zip(ours["agents"], ref["agents"]):
        x, y = o["input_ids"], r["input_ids"]
        if x != y:
            j = next((j for j, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
            return f"{o['name']}: input ids differ at {j} of {len(x)} / {len(y)}"
        if "output_ids" in o or r.get("output_ids") is not None:
            x, y = _strip(o.get("output_ids") or [], stop), _strip(r.get("output_ids") or [], stop)
            if x != y:
                j = next((j for j, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
                here = decode(x[j:j + 1]) if j < len(x) else "(end)"
                there = decode(y[j:j + 1]) if j < len(y) else "(end)"
                why = ""
                if gap is not None and j < len(x) and j < len(y):
                    a, b = gap(o["input_ids"], x[:j], x[j], y[j])
                    why = (f"; logits {a:.6f} / {b:.6f}, a gap of {a - b:.1e} against the reference's sampling "
                           f"temperature {temperature:g}")
                return (f"{o['name']}: generated token {j} differs: here {here!r}, reference {there!r} "
                        f"({len(x)} / {len(y)} tokens{why})")
    n_out = sum(len(_strip(o.get("output_ids") or [], stop)) for o in ours["agents"])
    kept = [(o.get("kept"), r["kept"]) for o, r in zip(ours["agents"], ref["agents"]) if "kept" in r]
    for (x, y), o in zip(kept, ours["agents"][len(ours["agents"]) - len(kept):]):
        if x != y:
            return f"{o['name']}: kept entries differ ({len(x or [])} / {len(y)} kept)"
    same_kept = f", kept entries at {len(kept)} compressions" if kept else ""
    return f"identical ({len(ours['agents'])} agents' input ids, {n_out} generated tokens{same_kept})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", type=Path, required=True, help="the reference checkout (kNN-latentMAS, LatentMAS)")
    p.add_argument("--ref_python", default=sys.executable, help="a Python with the reference's requirements")
    p.add_argument("--teams", type=Path, help="teams imported from --ref (default: import them into OUT/teams)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model_name", default="smollm2-135m")
    p.add_argument("--task", default="gsm8k")
    p.add_argument("--question_format", default="reference", choices=["harness", "reference"])
    p.add_argument("--items", type=int, default=5)
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    p.add_argument("--max_new_tokens", type=int, default=48)
    p.add_argument("--latent_steps", type=int, default=10)
    p.add_argument("--knn_keep", type=float, default=0.6)
    p.add_argument("--ref_temperature", type=float, default=1e-7,
                   help="the reference always samples: two logits closer than about this are a coin flip there")
    p.add_argument("--prompt_file", type=Path, help="the reference's --custom_prompt_file (Science-LatentMAS)")
    # the reference side (run by --ref_python)
    p.add_argument("--ref_side", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model_dir", help=argparse.SUPPRESS)
    p.add_argument("--ref_method", help=argparse.SUPPRESS)
    p.add_argument("--questions", help=argparse.SUPPRESS)
    p.add_argument("--knn", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.ref_side:
        return reference_side(a)
    labels = [m for m in a.methods.split(",") if m]
    unknown = [m for m in labels if m not in METHODS]
    if unknown:
        p.error(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    a.out = a.out.resolve()
    if a.prompt_file and not a.prompt_file.is_file():
        a.prompt_file = a.ref / a.prompt_file  # as import-team: a relative path may name a file of the checkout
    a.prompt_file = a.prompt_file.resolve() if a.prompt_file else None
    a.out.mkdir(parents=True, exist_ok=True)
    teams = a.teams
    if teams is None:
        teams = a.out / "teams"
        if not team_path(teams, "baseline", a.task).exists():
            extra = ["--prompt_file", str(a.prompt_file)] if a.prompt_file else []
            subprocess.run([sys.executable, "run.py", "import-team", str(a.ref), "--out", str(teams), *extra],
                           cwd=ROOT, env=_env(), check=True)
    model_dir = qwen_model_folder(a.model_name, a.out)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    stop = {t for t in (tok.eos_token_id, tok.pad_token_id) if t is not None}
    rows, gap = [], LogitGap(model_dir)
    for label in labels:
        run_dir = run_ours(a, label, teams)
        ours = sorted((json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines() if line),
                      key=lambda r: r["index"])
        folder = run_reference(a, label, model_dir, ours)
        for r in ours:
            ref = json.loads((folder / f"{r['index']}.json").read_text())
            rows.append({"method": label, "task": a.task, "item": r["index"],
                         "result": compare_item(r, ref, stop, tok.decode, None if METHODS[label][0] == "latent_mas"
                                                else gap, a.ref_temperature)})
            print(f"{label} {a.task} item {r['index']}: {rows[-1]['result']}", flush=True)
    (a.out / f"compare_{a.task}.json").write_text(json.dumps(rows, indent=1))
    print(f"\n| method | {a.task} item | result |\n|---|---|---|")
    for row in rows:
        print(f"| {row['method']} | {row['item']} | {row['result']} |")


class _Unused:
    """Stands in for vLLM's classes, which the reference builds even on its HF path."""

    def __init__(self, *args, **kwargs):
        pass


class _RefArgs(argparse.Namespace):
    """The reference's args: what its run.py would set, None for the options of other branches."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return None


def reference_side(a: argparse.Namespace) -> None:
    """Run the reference's own method classes on the question strings; record per agent the ids it saw and wrote."""
    import importlib.machinery
    import importlib.util
    import inspect
    import types

    sys.path.insert(0, str(ROOT))  # only the prompt-file reader (it imports errors, registry: no clash)
    from reference_import import read_prompt_file

    sys.path.remove(str(ROOT))
    sys.path.insert(0, str(a.ref))
    os.chdir(a.ref)
    missing = [m for m in ("seaborn", "matplotlib", "vllm") if importlib.util.find_spec(m) is None]
    for name in missing + (["matplotlib.pyplot"] if "matplotlib" in missing else []):
        stub = sys.modules[name] = types.ModuleType(name)  # plotting / vLLM: unused on the HF path
        stub.__spec__ = importlib.machinery.ModuleSpec(name, None)
        stub.LLM = stub.SamplingParams = _Unused
    if "matplotlib" in missing:
        sys.modules["matplotlib"].pyplot = sys.modules["matplotlib.pyplot"]
    import torch

    from models import ModelWrapper

    args = _RefArgs(
        method=a.ref_method, model_name=a.model_dir, task=a.task, prompt="sequential", device="cpu", device2="cpu",
        max_new_tokens=a.max_new_tokens, latent_steps=a.latent_steps, temperature=a.ref_temperature, top_p=0.95,
        generate_bs=1, text_mas_context_length=-1, think=False, latent_space_realign=False,
        include_old_prompts=False, seed=42, knn_filter=a.knn, knn_percentage=a.knn_keep, knn_min_keep=5,
        knn_strategy="top", show_heatmaps=False, show_heatmaps_singlelayer=False, save_embeddings=False,
        use_vllm=False, latent_only=False, sequential_info_only=False, first_agent_text=False,
        enable_prefix_caching=False, use_second_HF_model=False, do_not_enforce_qwen=False, custom_prompts=None,
        custom_prompt_text=None, custom_agents=None)
    if a.prompt_file:  # what the reference's run.py sets from --custom_prompt_file
        from methods import Agent

        settings, _ = read_prompt_file(Path(a.prompt_file), Agent)
        vars(args).update(settings)
    torch.manual_seed(42)
    wanted = {"model_name": a.model_dir, "device": torch.device("cpu"), "use_vllm": False, "args": args}
    model = ModelWrapper(**{k: v for k, v in wanted.items() if k in inspect.signature(ModelWrapper).parameters})
    written: list[list[int]] = []
    hf_generate = model.model.generate

    def generate(*g_args, **g_kwargs):  # record what the reference generated, in call order
        out = hf_generate(*g_args, **g_kwargs)
        prompt_len = g_kwargs["input_ids"].shape[1]
        written.append(out.sequences[0, prompt_len:].tolist())
        return out

    model.model.generate = generate
    common = dict(temperature=args.temperature, top_p=args.top_p, generate_bs=1, args=args)
    if a.ref_method == "baseline":
        from methods.baseline import BaselineMethod
        method = BaselineMethod(model, max_new_tokens=a.max_new_tokens, **common)
    elif a.ref_method == "text_mas":
        from methods.text_mas import TextMASMethod
        method = TextMASMethod(model, max_new_tokens_each=a.max_new_tokens, **common)
    else:
        from methods.latent_mas import LatentMASMethod
        method = LatentMASMethod(model, latent_steps=a.latent_steps, judger_max_new_tokens=a.max_new_tokens, **common)
    kept: list = []  # per kNN filtering, in call order: the kept cache positions (batch row 0)
    if hasattr(method, "_knn_filter_kv_cache") and hasattr(method, "_select_indices_from_cache"):
        knn_filter, select = method._knn_filter_kv_cache, method._select_indices_from_cache

        def filtering(*f_args, **f_kwargs):
            kept.append(None)
            return knn_filter(*f_args, **f_kwargs)

        def selecting(cache, indices):  # called per layer with the same indices: the first call tells them
            if kept and kept[-1] is None:
                kept[-1] = indices[0].tolist()
            return select(cache, indices)

        method._knn_filter_kv_cache, method._select_indices_from_cache = filtering, selecting
    for q in json.loads(Path(a.questions).read_text()):
        torch.manual_seed(42)
        written.clear()
        kept.clear()
        result = method.run_batch([{"question": q["question"], "solution": "", "gold": "0"}])[0]
        agents = [{k: ag.get(k) for k in ("name", "role", "input", "input_ids", "output")} for ag in result["agents"]]
        writers = [ag for ag in agents if a.ref_method != "latent_mas" or ag is agents[-1]]
        if len(writers) != len(written):
            raise SystemExit(f"{len(written)} generate calls for {len(writers)} writing agents")
        for ag, ids in zip(writers, written):
            ag["output_ids"] = ids
        for ag, ids in zip(agents[len(agents) - len(kept):], kept):  # filtering precedes each agent after the first
            ag["kept"] = ids
        Path(a.out, f"{q['index']}.json").write_text(json.dumps({"agents": agents}))
        print(f"reference {a.ref_method} item {q['index']} done", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
