"""LatentMAS-KV: one entry point for baseline, text_mas and latent_mas runs, and for merging and reporting them.

    python run.py --method latent_mas --task gsm8k --max_samples 5
    python run.py --config config/knn_seed.yaml --max_samples 20       # an experiment file; typed flags win
    python run.py --resume RUN_DIR                                      # continue an interrupted run
    python run.py merge RUN_DIR...  /  python run.py report RUN_DIR...
    python run.py sweep FILE.yaml [--dry_run] [--cell_shard I/N] [flags]   # a grid of runs (sweep.py)

A run is prepare (settings from flags, file or saved run; checks) -> open its directory (rundir.py) -> load (items,
model, method settings; config.json) -> loop (records on disk as they finish) -> finish (summary.json).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

# nothing heavy is imported before the settings are checked and the run directory is locked
from config import ConfigError, RunConfig, check, new_run, normalize, parse_command_line, resumed
from parallel import Launch, ScaleOutError
from registry import TASKS
from rundir import RunDir, RunDirError, read_config, summarize, to_json
from utils import environment, set_seed


def fail(message: str, code: int = 2):
    print(f"run.py: error: {message}", file=sys.stderr)
    sys.exit(code)


@dataclass
class Plan:
    """A checked command line: the settings, the run directory to resume (if any), the team, and this process's
    place in the launch."""

    cfg: RunConfig
    resume: str | None
    team: object  # teams.Team, None for baseline
    launch: Launch
    config_file: str | None = None


def prepare(argv: list[str]) -> Plan:
    """The run's settings from the flags, a --config file and a --resume directory, checked; bad input ends here in
    one line (exit 2), before the run directory exists and before anything heavy loads."""
    try:
        inv = parse_command_line(argv)
        saved = None
        if inv.resume:
            try:
                saved = read_config(inv.resume)
            except RunDirError as e:
                fail(f"--resume: {e}")
            cfg = resumed(saved["args"], inv.given, inv.resume)
        else:
            cfg = new_run(inv.given)
        normalize(cfg)
        warnings = check(cfg, inv.given)
        launch = Launch.from_config(cfg)  # the shard and device settings against the launcher's environment
    except (ConfigError, ScaleOutError) as e:
        fail(str(e))
    if launch.is_main:
        for w in warnings:
            print(f"run.py: warning: {w}", file=sys.stderr)
    return Plan(cfg, inv.resume, resolve_team(cfg, saved), launch, inv.config_file)


def resolve_args(argv: list[str]) -> RunConfig:
    """The checked settings of a command line (prepare without the rest)."""
    return prepare(argv).cfg


def resolve_team(cfg: RunConfig, saved: dict | None):
    """The team this run uses: the one saved with a resumed run, a --agents file, or the --prompt default."""
    try:
        return team_of(cfg, saved)
    except ConfigError as e:
        fail(str(e))


def team_of(cfg: RunConfig, saved: dict | None = None):
    """resolve_team, raising ConfigError (one line) instead of exiting: for callers that go on (sweep.py)."""
    from teams import TeamError, default_team, load_team, parse_team, with_first_agent_text

    if cfg.method == "baseline":
        return None
    agents = cfg.team.agents
    try:
        if saved and saved.get("team"):
            return parse_team(saved["team"], saved["team"].get("source", "saved team"))
        if agents and Path(agents).exists() and not Path(agents).is_file():
            raise ConfigError(f"--agents {agents} is not a file; give a JSON or YAML team file (see teams/)")
        team = load_team(agents) if agents else default_team(cfg.team.prompt)
        return with_first_agent_text(team) if cfg.team.first_agent_text else team
    except TeamError as e:
        raise ConfigError(str(e)) from None
    except UnicodeDecodeError:
        raise ConfigError(f"--agents {agents} is not UTF-8 text (a binary file?); give a JSON or YAML team file "
                          "(see teams/)") from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:  # python run.py report RUN_DIR... (report.py)
        from report import main as report_main
        return report_main(argv[1:])
    if argv[:1] == ["merge"]:  # python run.py merge RUN_DIR... (parallel.py)
        from parallel import merge_main
        return merge_main(argv[1:])
    if argv[:1] == ["sweep"]:  # python run.py sweep FILE.yaml ... (sweep.py)
        from sweep import main as sweep_main
        return sweep_main(argv[1:])
    plan = prepare(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        run_dir = RunDir.open(plan.cfg, plan.launch, plan.resume)  # created and locked before anything heavy loads
    except RunDirError as e:
        fail(str(e))
    try:
        items, data_info, wrapper, method_cfg = load(plan, run_dir)
    except BaseException:
        run_dir.discard()  # nothing was written there: a failed start leaves no empty folder behind
        raise
    try:
        done, interrupted = loop(plan, run_dir, items, wrapper, method_cfg)
        return finish(plan, run_dir, done, interrupted, data_info, len(items))
    finally:
        run_dir.release()


def load(plan: Plan, run_dir: RunDir, wrapper=None) -> tuple:
    """Items, model and method settings of this run; writes config.json for a new run. Fails in one line.
    `wrapper`: a model wrapper made for these settings already (a sweep loads each model once)."""
    # heavy imports after the checks, so --help and bad flags answer at once
    from compression import CompressionError, compressor_from_args
    from data import DataError, load_task
    from methods import MethodConfig
    from observe import observer_from_args

    cfg, launch, d = plan.cfg, plan.launch, plan.cfg.data
    try:
        items, data_info = load_task(d.task, split=d.split, data_source=d.data_source, data_path=d.data_path,
                                     seed=cfg.decoding.seed, max_samples=d.max_samples)
    except DataError as e:
        fail(str(e))
    if not items:
        fail(f"task {d.task} gave no items; check --split / --data_path")
    n_total, items = len(items), launch.shard(items)
    wrapper = wrapper or load_wrapper(cfg, launch)
    compressor = compressor_from_args(cfg.compression)
    try:
        if compressor is not None:
            compressor.check(wrapper.model)
    except CompressionError as e:
        fail(str(e))
    if not run_dir.resumed and launch.is_main:
        try:
            run_dir.write_config(config_json(plan, wrapper, data_info, launch.describe(n_total, items)))
        except RunDirError as e:
            fail(f"{e}; free space or fix the folder, then start the run again")
    method_cfg = MethodConfig.from_run(cfg, TASKS[d.task].answer_type, compressor=compressor, team=plan.team,
                                       observer=observer_from_args(cfg, run_dir.path))
    return items, data_info, wrapper, method_cfg


def load_wrapper(cfg: RunConfig, launch: Launch, loaded: tuple | None = None):
    """The model on this process's device, wrapped (models.ModelWrapper) with the run's model settings. `loaded`:
    (model, tokenizer, device) from models.load_model, when the caller loaded the model already."""
    from models import ModelError, ModelWrapper, load_model

    hw = cfg.hardware
    try:
        model, tokenizer, device = loaded or load_model(cfg.model.model_name, launch.device(hw.device), hw.dtype,
                                                        hw.attn_implementation, hw.device_map, hw.max_memory)
    except ModelError as e:
        fail(str(e))
    set_seed(cfg.decoding.seed)
    # the realignment matrix is built once here, outside every timed region
    wrapper = ModelWrapper(model, tokenizer, device, realign=cfg.latent.latent_space_realign,
                           build_realigner=cfg.method == "latent_mas")
    wrapper.prefix_reuse = cfg.model.prefix_reuse
    if hw.compile:
        if hasattr(type(wrapper), "compile"):
            wrapper.compile = True
        elif launch.is_main:
            print("run.py: warning: --compile: this model wrapper cannot compile its steps; ignored", file=sys.stderr)
    if wrapper.prompt_format == "fallback" and launch.is_main:
        print(f"[model] {cfg.model.model_name} has no chat template: prompts use the plain 'User: ... Assistant:' "
              f"format{' after BOS' if wrapper.bos else ''}, decoding stops at the next 'User:' turn", file=sys.stderr)
    return wrapper


def config_json(plan: Plan, wrapper, data_info: dict, scale_out: dict) -> dict:
    """config.json of a new run: every setting (flat, under "args"), data, team, device, model, versions."""
    from architecture import model_summary

    model = wrapper.model
    model_info = {"prompt_format": wrapper.prompt_format, "architecture": model_summary(model),
                  "latent_target_norm": wrapper.realigner.target_norm if wrapper.realigner else None}
    return {"args": plan.cfg.flat(), "config_file": plan.config_file, "data": data_info,
            "team": plan.team.as_dict() if plan.team else None, "device": str(wrapper.device),
            "dtype": str(model.dtype), "model": model_info, "environment": environment(), "scale_out": scale_out}


def loop(plan: Plan, run_dir: RunDir, items: list, wrapper, method_cfg) -> tuple[dict[int, dict], bool]:
    """Run this process's items not yet on disk; each record is appended and on disk as soon as its batch
    finishes. Returns every record so far and whether Ctrl-C stopped the loop. A disk error ends in one line saying
    how to continue; every item finished before it stays on disk."""
    import torch
    from tqdm import tqdm

    from methods import get_method

    cfg, launch = plan.cfg, plan.launch
    try:
        done = run_dir.done()  # records in results.jsonl and in every process's part file
        writer = run_dir.writer()
    except RunDirError as e:
        fail(str(e))
    todo = [it for it in launch.mine(items) if it.index not in done]
    print(f"[run]{launch.tag} {run_dir.path}  ({len(done)} done, {len(todo)} to go)", file=sys.stderr)
    run_batch, bs = get_method(cfg.method), cfg.decoding.generate_bs
    correct = sum(bool(r["correct"]) for r in done.values())
    bar = tqdm(total=len(done) + len(todo), initial=len(done), desc=f"{cfg.method}/{cfg.data.task}", unit="item",
               dynamic_ncols=True, disable=not launch.is_main)
    try:
        try:
            for start in range(0, len(todo), bs):
                with torch.inference_mode():
                    records = run_batch(wrapper, todo[start:start + bs], method_cfg)
                for rec in records:
                    writer.write(rec)
                    done[rec["index"]] = rec
                    correct += bool(rec["correct"])
                    if cfg.output.verbose:
                        tqdm.write(trace(rec))
                bar.update(len(records))
                bar.set_postfix(acc=f"{correct / len(done):.3f}")
        finally:
            bar.close()
            writer.close()
    except KeyboardInterrupt:
        return done, True
    except RunDirError as e:
        _disk_error(e, run_dir)
    return done, False


def finish(plan: Plan, run_dir: RunDir, done: dict[int, dict], interrupted: bool, data_info: dict,
           n_items: int, echo: bool = True) -> int:
    """In a data-parallel launch the main process waits for the others and merges the parts into results.jsonl;
    then it writes summary.json and prints it as one JSON line (echo; a sweep prints its own table). Exit code 130
    if any process was interrupted."""
    try:
        done, interrupted = run_dir.finish(done, interrupted)
        if plan.launch.is_main:
            summary = summarize(list(done.values()), plan.cfg, data_info, expected_n=n_items)
            summary["run_dir"] = str(run_dir.path)
            run_dir.write_summary(summary)
    except RunDirError as e:
        _disk_error(e, run_dir)
    if not plan.launch.is_main:
        return 130 if interrupted else 0
    if interrupted:
        if not echo:
            return 130
        print(f"[run] interrupted: {len(done)} of {n_items} items kept; continue with "
              f"python run.py --resume {run_dir.path}", file=sys.stderr)
        return 130
    if echo:
        print(to_json(summary))
    return 0


def _disk_error(e: RunDirError, run_dir: RunDir):
    fail(f"{e}; the finished items are on disk: free space or fix the folder, then continue with "
         f"python run.py --resume {run_dir.path}")


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
