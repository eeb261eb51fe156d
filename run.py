"""LatentMAS-KV: one entry point for baseline, text_mas and latent_mas runs.

    python run.py --method latent_mas --task gsm8k --max_samples 5
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

# parallel and utils import nothing heavy: run directories are checked and locked before torch loads
from parallel import RUNTIME_FLAGS, Launch, ScaleOutError
from registry import DEFAULT_MODEL, EMBEDDED_MODELS, METHODS, POLICIES, QUERIES, TASKS, TOPOLOGIES, query_problem
from utils import (
    ResultsWriter,
    RunDirError,
    environment,
    read_config,
    run_dir_name,
    set_seed,
    summarize,
    to_json,
    write_json,
)


class CleanParser(argparse.ArgumentParser):
    """Bad input gets one line naming the fix and exit code 2, not a usage dump."""

    def error(self, message: str):
        print(f"run.py: error: {message} (see python run.py --help)", file=sys.stderr)
        sys.exit(2)


def _bounded(kind, lo=None, hi=None, lo_open=False, hi_open=False, extra_ok=()):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        if isinstance(value, float) and not math.isfinite(value):  # nan passes every comparison, inf most
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if value in extra_ok:
            return value
        bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
        bad_hi = hi is not None and (value >= hi if hi_open else value > hi)
        if bad_lo or bad_hi:
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            rng = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
            also = f" or {', '.join(map(str, extra_ok))}" if extra_ok else ""
            raise argparse.ArgumentTypeError(f"{value} is outside {rng}{also}")
        return value
    return parse


def build_parser() -> CleanParser:
    p = CleanParser(description="LatentMAS-KV: latent multi-agent reasoning over a shared KV cache.",
                    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("what to run")
    g.add_argument("--method", choices=list(METHODS), help="method to run (required unless --resume)")
    g.add_argument("--model_name", default=DEFAULT_MODEL,
                   help=f"hub id, local HF folder, or embedded alias ({', '.join(EMBEDDED_MODELS)}; works offline)")
    g.add_argument("--task", choices=list(TASKS), default="gsm8k", help="benchmark task")
    g.add_argument("--prompt", choices=list(TOPOLOGIES), default="sequential",
                   help="topology: sequential (each agent on the earlier agents' work), hierarchical (independent "
                        "workers, the last agent reads them all), chain-hierarchical (hierarchical prompts on one "
                        "chained cache, as the reference code)")
    g.add_argument("--agents", default=None, metavar="FILE",
                   help="team file (JSON/YAML, see teams/); default: the shipped team of --prompt")
    g.add_argument("--first_agent_text", action="store_true",
                   help="latent_mas: the first agent writes text onto the shared cache instead of latent steps")
    g = p.add_argument_group("data")
    g.add_argument("--data_source", choices=["auto", "hub", "package", "file"], default="auto",
                   help="auto: the hub unless HF_HUB_OFFLINE=1 or it is unreachable, then the offline package")
    g.add_argument("--data_path", default=None, help="local JSON/JSONL/CSV/parquet file (implies --data_source file)")
    g.add_argument("--split", default=None, help="dataset split (default: the task's test split)")
    g.add_argument("--max_samples", type=_bounded(int, lo=1, extra_ok=(-1,)), default=100,
                   help="first N items; -1 for all")
    g = p.add_argument_group("latent reasoning")
    g.add_argument("--latent_steps", type=_bounded(int, 0, 4096), default=10,
                   help="latent steps per non-final agent (latent_mas); 0 still hands the prompts' cache on")
    g.add_argument("--latent_space_realign", action="store_true",
                   help="map hidden states to input-embedding space by ridge least squares (else: norm rescale only)")
    g.add_argument("--think", action="store_true", help="open a <think> block after each latent_mas agent's prompt")
    g.add_argument("--text_mas_context_length", type=_bounded(int, lo=1, extra_ok=(-1,)), default=-1,
                   help="text_mas: keep the last N tokens of the handed-on text; -1 for all")
    g = p.add_argument_group("KV-cache compression at hand-offs (latent_mas)")
    g.add_argument("--kv_policy", choices=["none", *POLICIES], default="none", help="how to score cache entries")
    g.add_argument("--kv_keep", "--knn_percentage", dest="kv_keep", type=_bounded(float, 0, 1, lo_open=True),
                   default=0.8, help="share of the cache kept at each compression, in (0, 1]")
    g.add_argument("--kv_min_keep", "--knn_min_keep", dest="kv_min_keep", type=_bounded(int, lo=0), default=5,
                   help="the most recent N entries are always kept")
    g.add_argument("--kv_scope", choices=["shared", "layer", "head"], default="shared",
                   help="one kept set for all layers (seed), one per layer, or one per KV head")
    g.add_argument("--kv_query", choices=list(QUERIES), default="embed-mean",
                   help="knn query: mean input embedding of the next prompt (seed), or its real attention")
    g.add_argument("--kv_protect", choices=["none", "latents"], default="none",
                   help="latents: never drop latent-step entries")
    g.add_argument("--kv_positions", choices=["original", "rerotate", "shift"], default="original",
                   help="after pruning: continue at the original positions (correct), re-rotate kept keys to "
                        "contiguous positions, or shift (the seed's defect: continue at the pruned length with "
                        "stale key phases; only to reproduce its numbers)")
    g.add_argument("--compress_at", choices=["every", "judger"], default="every",
                   help="compress before every non-first agent (seed, compounding) or once before the judger")
    g.add_argument("--knn_filter", action="store_true", help="the seed's switch: --kv_policy knn-<--knn_strategy>")
    g.add_argument("--knn_strategy", choices=["top", "bottom", "random"], default="top",
                   help="the seed's strategy, used with --knn_filter")
    g.add_argument("--include_old_prompts", action="store_true",
                   help="the seed's stacked prompts: each latent agent's prompt opens with the previous agent's")
    g.add_argument("--fidelity", action="store_true",
                   help="also run the team uncompressed and score the judger against it (agreement, KL)")
    g = p.add_argument_group("decoding")
    g.add_argument("--temperature", type=_bounded(float, lo=0), default=0.6, help="0 means greedy")
    g.add_argument("--top_p", type=_bounded(float, 0, 1, lo_open=True), default=0.95, help="nucleus mass, in (0, 1]")
    g.add_argument("--max_new_tokens", type=_bounded(int, lo=1), default=512,
                   help="tokens each writing agent may generate (the paper used 4096)")
    g.add_argument("--generate_bs", type=_bounded(int, lo=1), default=1,
                   help="items per batch (left padding; greedy results do not depend on it)")
    g.add_argument("--seed", type=int, default=42, help="seed for sampling and option shuffling")
    g = p.add_argument_group("hardware")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="auto: bfloat16 on CUDA, float32 on CPU")
    g.add_argument("--attn_implementation", default=None, help="e.g. sdpa, eager (default: the model's choice)")
    g.add_argument("--eval_workers", type=_bounded(int, lo=1), default=None,
                   help="code tasks: sandboxed test processes run at once for a batch (default: min(4, CPU count))")
    g = p.add_argument_group("scale-out (parallel.py; launch data-parallel runs with torchrun / accelerate launch)")
    g.add_argument("--num_shards", type=_bounded(int, lo=1), default=1,
                   help="split the items into K shards (a job array); merge them with python run.py merge RUN_DIR...")
    g.add_argument("--shard_id", type=_bounded(int, lo=0), default=0, help="which shard this run takes, 0..K-1")
    g.add_argument("--run_dir", default=None,
                   help="write to exactly this run directory; if it holds this same run, continue it (a requeued job)")
    g.add_argument("--device_map", default=None,
                   help="spread one model over the visible GPUs: auto, balanced, balanced_low_0, sequential, or a "
                        "JSON file {module: device}")
    g.add_argument("--max_memory", default=None, help="with --device_map: per-device caps, e.g. 0=60GiB,1=75GiB")
    g = p.add_argument_group("output")
    g.add_argument("--output_dir", default="runs", help="parent folder of run directories")
    g.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue an interrupted run in RUN_DIR with its saved settings")
    g.add_argument("--verbose", action="store_true", help="print each item's agents and result")
    g.add_argument("--show_heatmaps", action="store_true",
                   help="latent_mas: save per item and hand-off the per-layer key/prompt similarity heatmap and the "
                        "kept/dropped mask under RUN_DIR/heatmaps (observe.py)")
    g.add_argument("--save_embeddings", action="store_true",
                   help="latent_mas: save per item and agent the latent vectors and first/last hidden states as "
                        "safetensors under RUN_DIR/embeddings (observe.py)")
    return p


def flags_markdown() -> str:
    """The README's flags table, generated from the parser (a test checks the README holds exactly this)."""
    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for action in build_parser()._actions:
        if not action.option_strings or action.dest == "help":
            continue
        flag = action.option_strings[0]
        if action.choices:
            flag += " {" + ",".join(map(str, action.choices)) + "}"
        default = "" if action.default in (None, False) else f"`{action.default}`"
        text = action.help.replace("|", "/").replace("<", "&lt;")
        rows.append(f"| `{flag}` | {default} | {text} |")
    return "\n".join(rows)


def fail(message: str, code: int = 2):
    print(f"run.py: error: {message}", file=sys.stderr)
    sys.exit(code)


def given_flags(argv: list[str]) -> dict:
    """The flags typed on the command line, by destination (what was left to its default is absent)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return vars(parser.parse_args(argv))


def resumed(args: argparse.Namespace, argv: list[str]) -> argparse.Namespace:
    """--resume DIR: the saved run's settings, with the flags typed now on top. A typed flag that changes results
    and differs from the saved run is refused: the records on disk were made without it."""
    try:
        saved = read_config(args.resume)["args"]
    except RunDirError as e:
        fail(f"--resume: {e}")
    given = given_flags(argv)
    default = build_parser().get_default
    changed = [f"--{k} {v!r} (saved: {saved.get(k, default(k))!r})" for k, v in given.items()
               if k not in RUNTIME_FLAGS and v != saved.get(k, default(k))]
    if changed:
        it = "them" if len(changed) > 1 else "it"
        fail(f"--resume {args.resume}: {', '.join(changed)} would change the results; drop {it} to continue the "
             f"saved run, or start a new run with {it}")
    return argparse.Namespace(**{**vars(args), **{k: v for k, v in saved.items() if k not in given}})


def resolve_args(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume:
        args = resumed(args, argv)
    elif args.method is None:
        fail("--method is required (baseline, text_mas or latent_mas), or --resume RUN_DIR")
    if args.knn_filter:
        seed_policy = "random" if args.knn_strategy == "random" else f"knn-{args.knn_strategy}"
        if args.kv_policy not in ("none", seed_policy):
            fail(f"--knn_filter --knn_strategy {args.knn_strategy} means --kv_policy {seed_policy}, "
                 f"not {args.kv_policy}; give one of them")
        args.kv_policy = seed_policy
    if args.method != "latent_mas":
        for flag, value in (("--kv_policy", args.kv_policy != "none"), ("--fidelity", args.fidelity),
                            ("--show_heatmaps", args.show_heatmaps), ("--save_embeddings", args.save_embeddings)):
            if value:
                fail(f"{flag} works on the shared cache of --method latent_mas, not {args.method}")
    if query_problem(args.kv_policy, args.kv_query):
        fail(query_problem(args.kv_policy, args.kv_query))
    if args.method == "baseline" and (args.agents or args.first_agent_text):
        fail("--agents / --first_agent_text need a team: use --method text_mas or latent_mas")
    if args.first_agent_text and args.method != "latent_mas":
        fail("--first_agent_text applies to --method latent_mas (text_mas agents always write)")
    args.team = resolve_team(args)
    if args.data_path and args.data_source == "auto":
        args.data_source = "file"
    if args.data_source == "file" and not args.data_path:
        fail("--data_source file needs --data_path FILE")
    try:
        Launch.from_args(args)  # checks the shard and device flags against the launcher's environment
    except ScaleOutError as e:
        fail(str(e))
    return args


def resolve_team(args):
    """The team this run uses: the one saved with a resumed run, a --agents file, or the --prompt default."""
    from teams import TeamError, default_team, load_team, parse_team, with_first_agent_text

    if args.method == "baseline":
        return None
    try:
        if args.resume:
            saved = read_config(args.resume).get("team")
            if saved:
                return parse_team(saved, saved.get("source", "saved team"))
        if args.agents and Path(args.agents).exists() and not Path(args.agents).is_file():
            fail(f"--agents {args.agents} is not a file; give a JSON or YAML team file (see teams/)")
        team = load_team(args.agents) if args.agents else default_team(args.prompt)
        return with_first_agent_text(team) if args.first_agent_text else team
    except TeamError as e:
        fail(str(e))
    except UnicodeDecodeError:
        fail(f"--agents {args.agents} is not UTF-8 text (a binary file?); give a JSON or YAML team file (see teams/)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:  # python run.py report RUN_DIR... (report.py)
        from report import main as report_main
        return report_main(argv[1:])
    if argv[:1] == ["merge"]:  # python run.py merge RUN_DIR... (parallel.py)
        from parallel import merge_main
        return merge_main(argv[1:])
    args = resolve_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    launch = Launch.from_args(args)  # this process's rank in a torchrun / accelerate launch, and its shard
    try:
        run_dir = launch.open_run_dir(args, run_dir_name)  # created and locked before anything heavy loads
    except ScaleOutError as e:
        fail(str(e))
    try:
        setup = load(args, launch, run_dir)
    except BaseException:
        launch.discard(run_dir)  # nothing was written there: a failed start leaves no empty folder behind
        raise
    try:
        return run_items(args, launch, run_dir, *setup)
    finally:
        launch.release()


def load(args, launch: Launch, run_dir: Path) -> tuple:
    """Items, model and method settings of this run; writes config.json for a new run. Fails in one line."""
    # heavy imports after argument checks, so --help and bad flags answer at once
    from architecture import model_summary
    from compression import CompressionError, compressor_from_args
    from data import DataError, load_task
    from methods import MethodConfig
    from models import ModelError, ModelWrapper, load_model
    from observe import observer_from_args

    try:
        items, data_info = load_task(args.task, split=args.split, data_source=args.data_source,
                                     data_path=args.data_path, seed=args.seed, max_samples=args.max_samples)
    except DataError as e:
        fail(str(e))
    if not items:
        fail(f"task {args.task} gave no items; check --split / --data_path")
    n_total, items = len(items), launch.shard(items)
    try:
        model, tokenizer, device = load_model(args.model_name, launch.device(args.device), args.dtype,
                                              args.attn_implementation, args.device_map, args.max_memory)
    except ModelError as e:
        fail(str(e))
    compressor = compressor_from_args(args)
    try:
        if compressor is not None:
            compressor.check(model)
    except CompressionError as e:
        fail(str(e))
    set_seed(args.seed)
    # the realignment matrix is built once here, outside every timed region
    wrapper = ModelWrapper(model, tokenizer, device, realign=args.latent_space_realign,
                           build_realigner=args.method == "latent_mas")
    if wrapper.prompt_format == "fallback" and launch.is_main:
        print(f"[model] {args.model_name} has no chat template: prompts use the plain 'User: ... Assistant:' format"
              f"{' after BOS' if wrapper.bos else ''}, decoding stops at the next 'User:' turn", file=sys.stderr)
    if not args.resume and launch.is_main:
        model_info = {"prompt_format": wrapper.prompt_format, "architecture": model_summary(model),
                      "latent_target_norm": wrapper.realigner.target_norm if wrapper.realigner else None}
        config = {"args": {k: v for k, v in vars(args).items() if k not in ("resume", "team")}, "data": data_info,
                  "team": args.team.as_dict() if args.team else None,
                  "device": str(device), "dtype": str(model.dtype), "model": model_info,
                  "environment": environment(), "scale_out": launch.describe(n_total, items)}
        try:
            write_json(run_dir / "config.json", config)
        except RunDirError as e:
            fail(f"{e}; free space or fix the folder, then start the run again")
    cfg = MethodConfig(answer_type=TASKS[args.task].answer_type, max_new_tokens=args.max_new_tokens,
                       temperature=args.temperature, top_p=args.top_p, seed=args.seed, prompt=args.prompt,
                       latent_steps=args.latent_steps, think=args.think,
                       text_mas_context_length=args.text_mas_context_length, compressor=compressor,
                       fidelity=args.fidelity, stacked_prompts=args.include_old_prompts, team=args.team,
                       eval_workers=getattr(args, "eval_workers", None), observer=observer_from_args(args, run_dir))
    return items, data_info, wrapper, cfg


def run_items(args, launch: Launch, run_dir: Path, items: list, data_info: dict, wrapper, cfg) -> int:
    """Run this process's items not yet on disk, then (main process) write the summary. A disk error ends in one
    line saying how to continue; every item finished before it stays on disk."""
    try:
        done = launch.done(run_dir)  # records in results.jsonl and in every process's part file
        writer = ResultsWriter(launch.own_path(run_dir))
    except RunDirError as e:
        fail(str(e))
    todo = [it for it in launch.mine(items) if it.index not in done]
    print(f"[run]{launch.tag} {run_dir}  ({len(done)} done, {len(todo)} to go)", file=sys.stderr)
    try:
        interrupted = work(args, launch, todo, done, writer, wrapper, cfg)
        # in a data-parallel launch the main process waits for the others and merges the parts into results.jsonl
        done, interrupted = launch.finish(run_dir, done, interrupted)
        if launch.is_main:
            summary = summarize(list(done.values()), args, data_info, expected_n=len(items))
            summary["run_dir"] = str(run_dir)
            write_json(run_dir / "summary.json", summary)
    except RunDirError as e:
        fail(f"{e}; the finished items are on disk: free space or fix the folder, then continue with "
             f"python run.py --resume {run_dir}")
    if not launch.is_main:
        return 130 if interrupted else 0
    if interrupted:
        print(f"[run] interrupted: {len(done)} of {len(items)} items kept; continue with "
              f"python run.py --resume {run_dir}", file=sys.stderr)
        return 130
    print(to_json(summary))
    return 0


def work(args, launch: Launch, todo: list, done: dict[int, dict], writer, wrapper, cfg) -> bool:
    """The item loop: each record is appended and on disk as soon as its batch finishes. Returns whether Ctrl-C
    stopped it."""
    import torch
    from tqdm import tqdm

    from methods import get_method

    run_batch = get_method(args.method)
    correct = sum(bool(r["correct"]) for r in done.values())
    bar = tqdm(total=len(done) + len(todo), initial=len(done), desc=f"{args.method}/{args.task}", unit="item",
               dynamic_ncols=True, disable=not launch.is_main)
    try:
        for start in range(0, len(todo), args.generate_bs):
            batch = todo[start:start + args.generate_bs]
            with torch.inference_mode():
                records = run_batch(wrapper, batch, cfg)
            for rec in records:
                writer.write(rec)
                done[rec["index"]] = rec
                correct += bool(rec["correct"])
                if args.verbose:
                    tqdm.write(trace(rec))
            bar.update(len(records))
            bar.set_postfix(acc=f"{correct / len(done):.3f}")
    except KeyboardInterrupt:
        return True
    finally:
        bar.close()
        writer.close()
    return False


def trace(rec: dict) -> str:
    lines = [f"{'=' * 20} Problem #{rec['index']} {'=' * 20}", f"Question: {rec['question']}"]
    for a in rec["agents"]:
        lines.append(f"----- Agent: {a['name']} ({a['role']}) -----")
        lines.append(f"[prompt tokens] {a['prompt_tokens']}  [latent steps] {a['latent_steps']}  "
                     f"[KV in/out] {a['kv_tokens_in']}/{a['kv_tokens_out']} tokens  [time] {a['time_s']:.2f}s")
        if "output" in a:
            lines.append(f"[output] {a['output']}")
    lines.append(f"Result: Pred={rec['prediction']} | Gold={rec['gold']} | OK={rec['correct']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
