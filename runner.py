"""The life of a run: prepare -> open its directory -> load -> loop -> finish. A single run and every cell of a sweep
go through these same functions (a run is a sweep of one cell), so a fix lands once.

    prepare  the settings from flags, a --config file or a saved run, checked; the team; this process's launch
    open     rundir.RunDir.open: created and locked before anything heavy loads
    start    items, model (or the sweep's already loaded one), method settings; config.json; what is on disk
    loop     batches of the items not on disk yet, each record appended as its batch finishes; Ctrl-C stops it
    finish   (data parallel: the parts merged) summary.json

Every refusal is an errors.RunError with a one-line message; run.py prints it and exits 2. Nothing here exits.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

# nothing heavy is imported before the settings are checked and the run directory is locked
from config import ConfigError, Invocation, RunConfig, check, new_run, normalize, resumed
from errors import RunError
from parallel import Launch
from registry import TASKS
from rundir import RunDir, RunDirError, collect, read_config, summarize, to_json
from utils import environment, set_seed


@dataclass
class Plan:
    """A checked run: the settings, the run directory to resume (if any), the team, and this process's place in
    the launch."""

    cfg: RunConfig
    resume: str | None
    team: object  # teams.Team, None for baseline
    launch: Launch
    config_file: str | None = None
    warnings: list[str] = field(default_factory=list)  # settings given that do nothing (config.check)


def prepare(inv: Invocation) -> Plan:
    """The run's settings from the flags, a --config file and a --resume directory, checked, before the run
    directory exists and before anything heavy loads."""
    saved = None
    if inv.resume:
        try:
            saved = read_config(inv.resume)
        except RunDirError as e:
            raise RunDirError(f"--resume: {e}") from None
        cfg = resumed(saved["args"], inv.given, inv.resume)
    else:
        cfg = new_run(inv.given)
    normalize(cfg)
    warnings = check(cfg, inv.given)
    launch = Launch.from_config(cfg)  # the shard and device settings against the launcher's environment
    return Plan(cfg, inv.resume, team_of(cfg, saved), launch, inv.config_file, warnings)


def team_of(cfg: RunConfig, saved: dict | None = None):
    """The team this run uses: the one saved with a resumed run, a --agents file, or the --prompt default."""
    from teams import TeamError, default_team, load_team, parse_team, single_agent, with_first_agent_text

    if cfg.method == "baseline" and not cfg.team.agents:
        return None  # baseline's own prompt
    agents = cfg.team.agents
    try:
        if saved and saved.get("team"):
            return parse_team(saved["team"], saved["team"].get("source", "saved team"))
        if agents and Path(agents).exists() and not Path(agents).is_file():
            raise ConfigError(f"--agents {agents} is not a file; give a JSON or YAML team file (see teams/)")
        team = load_team(agents) if agents else default_team(cfg.team.prompt)
        if cfg.method == "baseline":
            return single_agent(team)
        return with_first_agent_text(team) if cfg.team.first_agent_text else team
    except TeamError as e:
        raise ConfigError(str(e)) from None


# --- one run, start to end -------------------------------------------------------------------------------------------

def run(plan: Plan) -> int:
    """A single run: a sweep of one cell. Prints the summary as one JSON line; exit code 130 if interrupted."""
    if plan.launch.is_main:
        for w in plan.warnings:
            print(f"run.py: warning: {w}", file=sys.stderr)
    run_dir = RunDir.open(plan.cfg, plan.launch, plan.resume)  # created and locked before anything heavy loads
    o = start(plan, run_dir, again=f"continue with python run.py --resume {run_dir.path}")
    interrupted = loop([o])
    code, summary = finish(o, interrupted)
    if plan.launch.is_main and interrupted:
        print(f"[run] interrupted: {len(o.done)} of {len(o.items)} items kept; continue with "
              f"python run.py --resume {run_dir.path}", file=sys.stderr)
    elif summary is not None:
        print(to_json(summary))
    return code


@dataclass
class OpenRun:
    """A run whose directory is locked and whose items, model and method settings are loaded."""

    plan: Plan
    run_dir: RunDir
    items: list
    data_info: dict
    wrapper: object  # models.ModelWrapper
    method_cfg: object  # methods.MethodConfig
    done: dict  # index -> record, everything on disk so far
    writer: object  # rundir.ResultsWriter
    todo: list  # this process's items not on disk yet
    again: str  # how to continue after a disk error: "continue with python run.py --resume DIR", ...
    label: str = "[run]"  # how the progress lines name it
    name: str = ""  # the progress bar's name
    tracking: object = None  # trackers.Tracking (--log_with), main process only

    @property
    def cfg(self) -> RunConfig:
        return self.plan.cfg


def start(plan: Plan, run_dir: RunDir, loader: Loader | None = None, again: str = "",
          label: str | None = None, name: str | None = None, group: str | None = None) -> OpenRun:
    """Load what the run needs into its open directory (its models from `loader`: a sweep's pool) and start its
    trackers (`group`: the sweep's name). A failure before anything was written removes the folder it created (no
    empty folders from failed starts); every failure releases the directory's lock."""
    try:
        items, data_info, wrapper, method_cfg = load(plan, run_dir, loader)
    except BaseException:
        run_dir.discard()
        raise
    try:
        done, writer = run_dir.done(), run_dir.writer()  # records in results.jsonl and in every process's part file
    except RunDirError:
        run_dir.release()
        raise
    todo = [it for it in plan.launch.mine(items) if it.index not in done]
    cfg = plan.cfg
    tracking = None
    if plan.launch.is_main and cfg.output.log_with:
        from trackers import open_tracking

        try:
            tracking = open_tracking(cfg, run_dir.path, name or run_dir.path.name, group)
        except RunError:
            writer.close()
            run_dir.release()
            raise
    return OpenRun(plan, run_dir, items, data_info, wrapper, method_cfg, done, writer, todo, again,
                   label or f"[run]{plan.launch.tag}", name or f"{cfg.method}/{cfg.data.task}", tracking)


def load(plan: Plan, run_dir: RunDir, loader: Loader | None = None) -> tuple:
    """Items, model and method settings of this run; writes config.json for a new run. `loader`: where the models
    come from (a sweep's pool keeps them across cells); default a Loader that loads them for this run."""
    # heavy imports after the checks, so --help and bad flags answer at once
    from compression import compressor_from_args
    from data import load_task
    from methods import MethodConfig
    from observe import observer_from_args

    cfg, launch, d = plan.cfg, plan.launch, plan.cfg.data
    items, data_info = load_task(d.task, split=d.split, data_source=d.data_source, data_path=d.data_path,
                                 seed=cfg.decoding.seed, max_samples=d.max_samples,
                                 question_format=d.question_format)
    if not items:
        raise ConfigError(f"task {d.task} gave no items; check --split / --data_path")
    n_total, items = len(items), launch.shard(items)
    wrapper, models = load_models(plan, loader or Loader())
    compressor = compressor_from_args(cfg.compression)
    if compressor is not None:
        for w in models.wrappers.values() if models else [wrapper]:
            compressor.check(w.model)
    if not run_dir.resumed and launch.is_main:
        try:
            run_dir.write_config(config_json(plan, wrapper, data_info, launch.describe(n_total, items), models))
        except RunDirError as e:
            raise RunDirError(f"{e}; free space or fix the folder, then start the run again") from None
    method_cfg = MethodConfig.from_run(cfg, TASKS[d.task].answer_type, compressor=compressor, team=plan.team,
                                       observer=observer_from_args(cfg, run_dir.path), models=models)
    return items, data_info, wrapper, method_cfg


class Loader:
    """Where a run's models and latent maps come from: this one loads them for the run that asks (a single run);
    sweep.ModelPool keeps each across the cells that need it."""

    def wrapper(self, cfg: RunConfig, launch: Launch):
        """A fresh wrapper (seeded as a run of its own) on cfg.model.model_name with cfg's hardware settings."""
        return load_wrapper(cfg, launch)

    def latent_map(self, sender, receiver):
        """The latent map between two models.ModelWrapper (--cross_model latent-map)."""
        from latent_map import LatentMap

        return LatentMap.build(sender, receiver)


def load_models(plan: Plan, loader: Loader) -> tuple:
    """The run's models: (the wrapper the loop hands to the method: the last agent's, models.TeamModels or None for
    baseline). A team loads each distinct model its agents name once, through `loader` (so a sweep's loaded models
    serve), and runs as models.team_models decides: plan.team becomes the team as it runs (config.json saves that
    one), and each change is said in one line."""
    from models import team_models
    from parallel import DEVICE_MAPS
    from registry import TOPOLOGIES

    cfg, launch = plan.cfg, plan.launch
    if plan.team is None:
        return loader.wrapper(cfg, launch), None

    def make(name: str):
        if name == cfg.model.model_name:
            return loader.wrapper(cfg, launch)
        if cfg.hardware.device_map and cfg.hardware.device_map not in DEVICE_MAPS:
            raise ConfigError(f"--device_map {cfg.hardware.device_map} names one model's modules; a team of several "
                              f"models takes a strategy ({', '.join(DEVICE_MAPS)}) that places each model in turn")
        return loader.wrapper(cfg.updated({"model_name": name}), launch)

    def log(line: str) -> None:
        if launch.is_main:
            print(line, file=sys.stderr)

    models, plan.team, notices = team_models(plan.team, cfg.model.model_name, make, TOPOLOGIES[cfg.team.prompt][1],
                                             cfg.model.cross_model, cfg.method, log, loader.latent_map)
    for line in notices:
        log(f"[team] {line}")
    return models.of(len(models.names) - 1), models


def load_wrapper(cfg: RunConfig, launch: Launch, loaded: tuple | None = None, realigner=None):
    """The model on this process's device, wrapped (models.ModelWrapper) with the run's model settings. `loaded`:
    (model, tokenizer, device) from models.load_model, when the caller loaded the model already; `realigner`: the
    models.Realigner built for this model and --realign before (a sweep's pool keeps it), else built here."""
    from models import ModelWrapper, load_model

    hw = cfg.hardware
    model, tokenizer, device = loaded or load_model(cfg.model.model_name, launch.device(hw.device), hw.dtype,
                                                    hw.attn_implementation, hw.device_map, hw.max_memory)
    set_seed(cfg.decoding.seed)
    # the realignment matrix is built once here, outside every timed region
    wrapper = ModelWrapper(model, tokenizer, device, realign=cfg.latent.realign,
                           build_realigner=cfg.method == "latent_mas", realigner=realigner)
    wrapper.prefix_reuse = cfg.model.prefix_reuse
    if hw.compile:
        wrapper.compile = True  # compiles the one-token steps once, here
    if wrapper.prompt_format == "fallback" and launch.is_main:
        print(f"[model] {cfg.model.model_name} has no chat template: prompts use the plain 'User: ... Assistant:' "
              f"format{' after BOS' if wrapper.bos else ''}, decoding stops at the next 'User:' turn", file=sys.stderr)
    return wrapper


def config_json(plan: Plan, wrapper, data_info: dict, scale_out: dict, models=None) -> dict:
    """config.json of a new run: every setting (flat, under "args"), data, team, device, model (the last agent's),
    the team's models and latent maps (teams of several models), versions."""
    from architecture import model_summary

    model = wrapper.model
    model_info = {"prompt_format": wrapper.prompt_format, "architecture": model_summary(model),
                  "latent_target_norm": wrapper.realigner.target_norm if wrapper.realigner else None,
                  "realign": wrapper.realigner.describe() if wrapper.realigner else None}
    return {"args": plan.cfg.flat(), "config_file": plan.config_file, "data": data_info,
            "team": plan.team.as_dict() if plan.team else None, "device": str(wrapper.device),
            "dtype": str(model.dtype), "model": model_info, "models": models.describe() if models else None,
            "latent_maps": [{"from": a, "to": b, "shape": list(m.weight.shape), "vocab": m.vocab}
                            for (a, b), m in models.maps.items()] if models else None,
            "environment": environment(), "scale_out": scale_out}


# --- the loop --------------------------------------------------------------------------------------------------------

@dataclass
class SharedReference:
    """The uncompressed team's judger on one batch of items, for every --fidelity run of a sweep unit."""

    indices: tuple = ()
    ref: object = None

    def get(self, o: OpenRun, batch: list):
        from methods import latent_mas

        key = tuple(it.index for it in batch)
        if key != self.indices:
            self.indices, self.ref = key, latent_mas.reference(o.wrapper, batch, o.method_cfg)
        return self.ref


def _run_batch(o: OpenRun, batch: list, shared: SharedReference | None) -> list[dict]:
    from methods import get_method, grade_batch

    if shared is not None and o.method_cfg.fidelity and o.cfg.method == "latent_mas":
        from methods import latent_mas

        records = latent_mas.run_batch(o.wrapper, batch, o.method_cfg, ref=shared.get(o, batch))
        return grade_batch(batch, records, o.method_cfg)
    return get_method(o.cfg.method)(o.wrapper, batch, o.method_cfg)


def loop(opened: list[OpenRun], shared: SharedReference | None = None) -> bool:
    """Run the items not on disk yet, batch by batch, each batch of items through every open run before the next
    (one run: the plain loop; several: --fidelity cells of a sweep sharing `shared`). Every record is on disk as
    soon as its batch finishes. Returns whether Ctrl-C stopped it. A disk error ends in one line saying how to
    continue; every item finished before it stays on disk. The results writers are closed on the way out, and on an
    error the run directories are released."""
    import torch
    from tqdm import tqdm

    order = {it.index: k for k, it in enumerate(opened[0].items)}
    wanted = sorted({it.index for o in opened for it in o.todo}, key=order.get)
    bs = opened[0].cfg.decoding.generate_bs
    single = len(opened) == 1
    for o in opened:
        print(f"{o.label} {o.run_dir.path}  ({len(o.done)} done, {len(o.todo)} to go)", file=sys.stderr)
    desc = opened[0].name if single else f"{len(opened)} cells, one reference"
    bar = tqdm(total=sum(len(o.done) + len(o.todo) for o in opened), initial=sum(len(o.done) for o in opened),
               desc=desc[:40], unit="item", dynamic_ncols=True, disable=not opened[0].plan.launch.is_main)
    o = opened[0]
    try:
        for start_at in range(0, len(wanted), bs):
            chunk = set(wanted[start_at:start_at + bs])
            for o in opened:
                batch = [it for it in o.todo if it.index in chunk]
                if not batch:
                    continue
                with torch.inference_mode():
                    records = _run_batch(o, batch, shared)
                for rec in records:
                    o.writer.write(rec)
                    o.done[rec["index"]] = rec
                    if o.tracking is not None:
                        o.tracking.item(rec, o.done)
                    if o.cfg.output.verbose:
                        tqdm.write(trace(rec))
                bar.update(len(records))
                if single:
                    bar.set_postfix(acc=f"{sum(bool(r['correct']) for r in o.done.values()) / len(o.done):.3f}")
    except KeyboardInterrupt:
        for each in opened:  # a stop between a record's write and its bookkeeping: the files are the truth
            try:
                each.done.update(collect(each.run_dir.path))
            except RunDirError:
                pass  # a damaged file: the next resume names it
        return True
    except BaseException as e:
        for each in opened:  # these runs cannot finish now
            each.run_dir.release()
            if each.tracking is not None:
                each.tracking.close()
        if isinstance(e, RunDirError):
            raise RunDirError(f"{e}; the finished items are on disk: free space or fix the folder, then {o.again}") \
                from None
        raise
    finally:
        bar.close()
        for each in opened:
            each.writer.close()
    return False


def finish(o: OpenRun, interrupted: bool) -> tuple[int, dict | None]:
    """In a data-parallel launch the main process waits for the others and merges the parts into results.jsonl;
    then it writes summary.json. Returns (exit code: 130 if any process was interrupted, the summary or None on a
    worker). The run directory is released."""
    try:
        done, interrupted = o.run_dir.finish(o.done, interrupted)
        o.done = done
        summary = None
        if o.plan.launch.is_main:
            summary = summarize(list(done.values()), o.cfg, o.data_info, expected_n=len(o.items))
            summary["run_dir"] = str(o.run_dir.path)
            o.run_dir.write_summary(summary)
            if o.tracking is not None:
                o.tracking.summary(summary)
    except RunDirError as e:
        raise RunDirError(f"{e}; the finished items are on disk: free space or fix the folder, then {o.again}") \
            from None
    finally:
        o.run_dir.release()
        if o.tracking is not None:
            o.tracking.close()
    return (130 if interrupted else 0), summary


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



# --- the run command (run.py) ----------------------------------------------------------------------------------------

def add_arguments(p) -> None:
    """The run command's arguments: every setting (only what is typed is parsed), --config, --resume."""
    from config import add_run_arguments

    add_run_arguments(p, defaults=False)


def command(args) -> int:
    from config import invocation

    return run(prepare(invocation(vars(args))))
