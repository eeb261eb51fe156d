"""A run's settings: one typed configuration, the command line made from it, experiment files, and the rules for
flags that would do nothing.

`RunConfig` holds eight small dataclasses (team, model, data, latent, compression, decoding, hardware, output). Each
field is one flag of the same name (`--kv_keep` sets `compression.kv_keep`); its help, choices, parser and aliases
sit on the field, and so does `runtime=True` for the few that never change a run's records (device, batch size,
output folder, ...): those may differ on --resume, between a run and its --run_dir, and between shards. config.json
stores the configuration flat under "args", one key per field; `RunConfig.from_saved` reads it back, also from
files written before a field existed (the field takes its default). Run names, the summary's settings and the
observer's label come from here.

    python run.py --config config/knn_seed.yaml --max_samples 20        # a flag on the command line wins

An experiment file is a YAML or JSON mapping whose keys are flag names, flat or grouped under the section names.

Adding a setting = one field below (default, help, choices). A method reads it as `cfg.<name>` (methods.MethodConfig
holds this configuration); a check belongs in `check` if it does nothing for some methods.
"""
from __future__ import annotations

import argparse
import difflib
import math
import os
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import ClassVar

from errors import RunError
from registry import (
    CROSS_MODEL,
    DATA_SOURCES,
    DEFAULT_MODEL,
    EMBEDDED_MODELS,
    METHODS,
    POLICIES,
    POSITIONS,
    QUANTS,
    QUERIES,
    REALIGNS,
    SCOPES,
    TASKS,
    TOPOLOGIES,
    TRACKERS,
    query_problem,
    resolve_source,
)
from strictfiles import clip, shown

HANDOFFS = ("all", "latent_only", "sequential_info_only")
THINK_DEFAULT = "<think>"  # what the public LatentMAS code appends for --think
THINK_BEFORE = "<think>\n"  # what --think (a switch then) appended before it took a string

class ConfigError(RunError):
    """A setting, a combination of settings or an experiment file that cannot work; the message names the fix."""


def _trackers(text: str) -> str:
    """An argparse type: tracker names (registry.TRACKERS), comma-separated, normalised."""
    from trackers import TrackerError, parse_names

    try:
        return ",".join(parse_names(text))
    except TrackerError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _bounded(kind, lo=None, hi=None, lo_open=False, hi_open=False, extra_ok=()):
    """An argparse type: `kind`, finite, inside the range (or one of extra_ok)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{shown(text)} is not a valid {kind.__name__}") from None
        if isinstance(value, float) and not math.isfinite(value):  # nan passes every comparison, inf most
            raise argparse.ArgumentTypeError(f"{shown(text)} is not a finite number")
        if value in extra_ok:
            return value
        bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
        bad_hi = hi is not None and (value >= hi if hi_open else value > hi)
        if bad_lo or bad_hi:
            rng = f"{'(' if lo_open else '['}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}" \
                  f"{')' if hi_open else ']'}"
            also = f" or {', '.join(map(str, extra_ok))}" if extra_ok else ""
            raise argparse.ArgumentTypeError(f"{value} is outside {rng}{also}")
        return value
    return parse


def setting(default, help: str, *, parse=None, choices=None, flag: str | None = None, aliases=(),
            metavar: str | None = None, runtime: bool = False, summary: bool = True, const: str | None = None):
    """A field that is one command-line flag. runtime: never changes a run's records; summary (compression only):
    part of the summary's `compression` settings; const: the flag's value may be left out (it is then `const`; in an
    experiment file `true` means `const` and `false` the default)."""
    return field(default=default, metadata={"help": help, "parse": parse, "choices": choices, "flag": flag,
                                            "aliases": tuple(aliases), "metavar": metavar, "runtime": runtime,
                                            "summary": summary, "const": const})


# --- the sections ----------------------------------------------------------------------------------------------------

@dataclass
class TeamConfig:
    TITLE: ClassVar[str] = "what to run: the method and its team"
    method: str | None = setting(None, "method to run (required for a new run; a resumed run has its own)",
                                 choices=tuple(METHODS))
    prompt: str = setting("sequential", "topology: sequential (each agent on the earlier agents' work), hierarchical "
                          "(independent workers, the last agent reads them all), chain-hierarchical (hierarchical "
                          "prompts on one chained cache, as the reference code)", choices=tuple(TOPOLOGIES))
    agents: str | None = setting(None, "team file (JSON/YAML, see teams/); default: the shipped team of --prompt. "
                                 "baseline takes a one-agent team. {prompt} and {task} in the path are replaced "
                                 "by the run's (baseline: {prompt} is 'baseline'), e.g. teams/ref/{prompt}_{task}.yaml",
                                 metavar="FILE")
    first_agent_text: bool = setting(False, "latent_mas: the first agent writes text onto the shared cache instead of "
                                     "latent steps")
    text_mas_context_length: int = setting(-1, "text_mas: keep the last N tokens of the handed-on text; -1 for all "
                                           "(a team with context_cut: python_slice: its first N characters, "
                                           "-1 dropping the last one, as the reference code)",
                                           parse=_bounded(int, lo=1, extra_ok=(-1,)))


@dataclass
class ModelConfig:
    TITLE: ClassVar[str] = "model"
    model_name: str = setting(DEFAULT_MODEL, "hub id, local HF folder, or embedded alias "
                              f"({', '.join(EMBEDDED_MODELS)}; works offline); a team file's agents may name "
                              "their own (`model`)")
    cross_model: str = setting("text", "latent_mas, a team of several models: how an agent's work reaches an agent "
                               "on another model. text: a latent sender writes text instead; latent-map: its latent "
                               "vectors are mapped into the receiver's input-embedding space (models sharing a "
                               "tokenizer)", choices=tuple(CROSS_MODEL))
    prefix_reuse: bool = setting(True, "prefill each prompt whole instead of prefilling the template text that all "
                                 "items' prompts share once and copying it into each row (reuse is on by default; "
                                 "outputs agree up to float rounding)", flag="no_prefix_reuse")


@dataclass
class DataConfig:
    TITLE: ClassVar[str] = "data"
    task: str = setting("gsm8k", "benchmark task", choices=tuple(TASKS))
    data_source: str = setting("auto", "auto: the hub unless HF_HUB_OFFLINE=1 or it is unreachable, then the offline "
                               "package", choices=DATA_SOURCES)
    data_path: str | None = setting(None, "local JSON/JSONL/CSV/parquet file (implies --data_source file)")
    split: str | None = setting(None, "dataset split (default: the task's test split)")
    max_samples: int = setting(100, "first N items; -1 for all", parse=_bounded(int, lo=1, extra_ok=(-1,)))
    question_format: str = setting("harness", "how questions are laid out: this harness's, or the public LatentMAS "
                                   "code's where its source is the same (ARC: 'a: text' option lines; see "
                                   "docs/reproduce.md)", choices=("harness", "reference"))
    num_shards: int = setting(1, "split the items into K shards (a job array); merge them with python run.py merge "
                              "RUN_DIR...", parse=_bounded(int, lo=1))
    shard_id: int = setting(0, "which shard this run takes, 0..K-1", parse=_bounded(int, lo=0))


@dataclass
class LatentConfig:
    TITLE: ClassVar[str] = "latent reasoning (latent_mas)"
    latent_steps: int = setting(10, "latent steps per non-final agent (latent_mas); 0 still hands the prompts' cache "
                                "on", parse=_bounded(int, 0, 4096))
    latent_space_realign: bool = setting(False, "map hidden states to input-embedding space by ridge least squares "
                                         "(LatentMAS; the same as --realign ridge)")
    realign: str = setting("norm", "how a latent step maps the last hidden state to the input-embedding space: "
                           "norm rescale only, ridge (LatentMAS), statebridge (whitening + orthogonal Procrustes, "
                           "computed once per model)", choices=tuple(REALIGNS))
    think: str | None = setting(None, "append this text to every latent_mas agent's rendered prompt, the last "
                                "agent's included (alone: '<think>', as the public LatentMAS code; its Science "
                                "branch used '<think>\\n')", const=THINK_DEFAULT, metavar="TEXT")
    handoff: str = setting("all", "latent_mas chain: what each non-final agent hands on: all entries, or as the "
                           "reference code's switches, only the last --latent_steps entries (latent_only) or only "
                           "the agent's own entries (sequential_info_only); positions after the cut: --kv_positions",
                           choices=HANDOFFS)
    zero_steps_judger: str = setting("cache", "with --latent_steps 0: the last agent reads the earlier agents' prompt "
                                     "cache (cache), or starts from an empty cache as the public LatentMAS code does "
                                     "(empty)", choices=("cache", "empty"))


@dataclass
class CompressionConfig:
    TITLE: ClassVar[str] = "KV-cache compression at hand-offs (latent_mas)"
    kv_policy: str = setting("none", "how to score cache entries (kvcomm: keep layers instead)",
                             choices=("none", *POLICIES))
    kv_keep: float = setting(0.8, "share of the cache kept at each compression, in (0, 1] (kvcomm: share of layers)",
                             parse=_bounded(float, 0, 1, lo_open=True), aliases=("--knn_percentage",))
    kv_min_keep: int = setting(5, "the most recent N entries are always kept", parse=_bounded(int, lo=0),
                               aliases=("--knn_min_keep",))
    kv_scope: str = setting("shared", "one kept set for all layers (seed), one per layer, or one per KV head",
                            choices=SCOPES)
    kv_query: str = setting("embed-mean", "knn query: mean input embedding of the next prompt (seed), or its real "
                            "attention", choices=tuple(QUERIES))
    kv_protect: str = setting("none", "latents: never drop latent-step entries", choices=("none", "latents"))
    kv_positions: str = setting("original", "after pruning: continue at the original positions (correct), "
                                "re-rotate kept keys to contiguous positions, or shift (the seed's defect: continue at "
                                "the pruned length with stale key phases; only to reproduce its numbers)",
                                choices=POSITIONS)
    kv_layers: float = setting(1.0, "KVComm layer selection after token eviction: share of layers in which the earlier "
                               "agents' entries stay, in (0, 1]; 1 keeps every layer",
                               parse=_bounded(float, 0, 1, lo_open=True))
    kvcomm_alpha: float = setting(1.0, "KVComm: weight of attention importance vs the Gaussian prior over depth",
                                  parse=_bounded(float, 0, 1))
    kvcomm_mu: float = setting(0.5, "KVComm: centre of the depth prior, as a share of the layers",
                               parse=_bounded(float, 0, 1))
    kvcomm_sigma: float = setting(10.0, "KVComm: width of the depth prior, in layers",
                                  parse=_bounded(float, 0, lo_open=True))
    kv_quant: str = setting("none", "hold the entries handed on at each compression as integer codes (KIVI-style: "
                            "keys per channel, values per token); later entries stay in the model's precision",
                            choices=tuple(QUANTS))
    kv_quant_group: int = setting(32, "--kv_quant group: real entries per key scale, channels per value scale",
                                  parse=_bounded(int, lo=2))
    compress_at: str = setting("every", "compress before every non-first agent (seed, compounding) or once before the "
                               "judger", choices=("every", "judger"))
    knn_filter: bool = setting(False, "the seed's switch: --kv_policy knn-<--knn_strategy>", summary=False)
    knn_strategy: str = setting("top", "the seed's strategy, used with --knn_filter",
                                choices=("top", "bottom", "random"), summary=False)
    include_old_prompts: bool = setting(False, "the seed's stacked prompts: each latent agent's prompt opens with the "
                                        "previous agent's")
    fidelity: bool = setting(False, "also run the team uncompressed and score the judger against it (agreement, KL)",
                             summary=False)


@dataclass
class DecodingConfig:
    TITLE: ClassVar[str] = "decoding"
    temperature: float = setting(0.6, "0 means greedy", parse=_bounded(float, lo=0))
    top_p: float = setting(0.95, "nucleus mass, in (0, 1]", parse=_bounded(float, 0, 1, lo_open=True))
    max_new_tokens: int = setting(512, "tokens each writing agent may generate (the paper used 4096)",
                                  parse=_bounded(int, lo=1))
    generate_bs: int = setting(1, "items per batch (left padding; greedy results do not depend on it)",
                               parse=_bounded(int, lo=1), runtime=True)
    seed: int = setting(42, "seed for sampling and option shuffling", parse=int)


@dataclass
class HardwareConfig:
    TITLE: ClassVar[str] = "hardware and the code sandbox (data-parallel: launch with torchrun / accelerate launch)"
    device: str = setting("auto", "auto | cpu | cuda | cuda:N", runtime=True)
    dtype: str = setting("auto", "auto: bfloat16 on CUDA, float32 on CPU",
                         choices=("auto", "float32", "bfloat16", "float16"))
    attn_implementation: str | None = setting(None, "e.g. sdpa, eager (default: the model's choice)", runtime=True)
    device_map: str | None = setting(None, "spread one model over the visible GPUs: auto, balanced, balanced_low_0, "
                                     "sequential, or a JSON file {module: device}", runtime=True)
    max_memory: str | None = setting(None, "with --device_map: per-device caps, e.g. 0=60GiB,1=75GiB", runtime=True)
    compile: bool = setting(False, "run every one-token step (decoding, latent steps) through torch.compile; for GPU "
                            "nodes: the first steps pay the compilation (tens of seconds)", runtime=True)
    eval_workers: int | None = setting(None, "code tasks: sandboxed test processes run at once for a batch (default: "
                                       "min(4, CPU count))", parse=_bounded(int, lo=1), runtime=True)
    code_timeout_s: float | None = setting(None, "code tasks: wall-clock limit per sample in seconds (default: 10)",
                                           parse=_bounded(float, 0, lo_open=True))
    code_memory_mb: int | None = setting(None, "code tasks: address-space limit per sample in MiB (default: 1024)",
                                         parse=_bounded(int, lo=1))


@dataclass
class OutputConfig:
    TITLE: ClassVar[str] = "output"
    output_dir: str = setting("runs", "parent folder of run directories", runtime=True)
    run_dir: str | None = setting(None, "write to exactly this run directory; if it holds this same run, continue it "
                                  "(a requeued job)", runtime=True)
    verbose: bool = setting(False, "print each item's agents and result", runtime=True)
    show_heatmaps: bool = setting(False, "latent_mas: save per item and hand-off the per-layer key/prompt similarity "
                                  "heatmap and the kept/dropped mask under RUN_DIR/heatmaps (observe.py)")
    save_embeddings: bool = setting(False, "latent_mas: save per item and agent the latent vectors and first/last "
                                    "hidden states as safetensors under RUN_DIR/embeddings (observe.py)")
    trace: bool = setting(False, "records hold, per agent, the chat messages, the rendered text, its token ids and "
                          "the generated ids, and at each compression the kept entries (to compare token by token "
                          "with another implementation)")
    log_with: str | None = setting(None, f"experiment trackers through accelerate, comma-separated: "
                                   f"{', '.join(TRACKERS)} (settings, per-item accuracy / tokens / KV bytes / time, "
                                   "the summary; pip install -r requirements-trackers.txt)", parse=_trackers,
                                   metavar="NAME[,NAME]", runtime=True)
    log_dir: str | None = setting(None, "where the trackers' local stores go (default: RUN_DIR/trackers; a sweep: "
                                  "its folder's trackers/)", runtime=True)


SECTIONS: dict[str, type] = {"team": TeamConfig, "model": ModelConfig, "data": DataConfig, "latent": LatentConfig,
                             "compression": CompressionConfig, "decoding": DecodingConfig, "hardware": HardwareConfig,
                             "output": OutputConfig}


@dataclass(frozen=True)
class Flag:
    """One setting: its field, its section and its command-line spelling."""

    name: str
    section: str
    spec: object  # dataclasses.Field

    @property
    def meta(self):
        return self.spec.metadata

    @property
    def default(self):
        return self.spec.default

    @property
    def option(self) -> str:
        return "--" + (self.meta["flag"] or self.name)

    @property
    def runtime(self) -> bool:
        return self.meta["runtime"]

    @property
    def negated(self) -> bool:
        """A default-on switch whose flag turns it off (--no_prefix_reuse sets prefix_reuse false)."""
        return self.default is True


FLAGS: dict[str, Flag] = {f.name: Flag(f.name, sec, f) for sec, cls in SECTIONS.items() for f in fields(cls)}
# every spelling a flag has (field name, flag, aliases) -> field name: what experiment files may use as keys
SPELLINGS: dict[str, str] = {s.removeprefix("--"): n for n, fl in FLAGS.items()
                             for s in (n, fl.option, *fl.meta["aliases"])}
RUNTIME = frozenset(n for n, fl in FLAGS.items() if fl.runtime)


# --- the configuration -----------------------------------------------------------------------------------------------

@dataclass
class RunConfig:
    team: TeamConfig = field(default_factory=TeamConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def get(self, name: str):
        return getattr(getattr(self, FLAGS[name].section), name)

    def flat(self) -> dict:
        """{field: value} for every setting: what config.json holds under "args"."""
        return {name: self.get(name) for name in FLAGS}

    def updated(self, values: dict) -> RunConfig:
        """A copy with `values` ({field: value}) set; unknown names are an error."""
        sections = {sec: {} for sec in SECTIONS}
        for name, value in values.items():
            sections[FLAGS[name].section][name] = value
        return RunConfig(**{sec: replace(getattr(self, sec), **changes) for sec, changes in sections.items()})

    @classmethod
    def from_saved(cls, args: dict) -> RunConfig:
        """The configuration saved in config.json ("args"). A key no field has any more is ignored; a field the
        file lacks (it was written before the field existed) takes its default."""
        args = {k: v for k, v in args.items() if k in FLAGS}
        if isinstance(args.get("think"), bool):  # written when --think was a switch: it appended THINK_BEFORE
            args["think"] = THINK_BEFORE if args["think"] else None
        return cls().updated(args)

    def result_settings(self) -> dict:
        """The settings that can change a run's records: all but the runtime ones."""
        return {k: v for k, v in self.flat().items() if k not in RUNTIME}

    def differences(self, other: RunConfig, ignore=()) -> dict[str, tuple]:
        """{field: (mine, other's)} over the result settings that differ, except `ignore`."""
        a, b = self.result_settings(), other.result_settings()
        return {k: (a[k], b[k]) for k in a if k not in ignore and a[k] != b[k]}

    # --- how a run names and describes itself -----------------------------------------------------------------------
    @property
    def method(self) -> str | None:
        return self.team.method

    def run_name(self) -> str:
        """method_task_model[_team][_mN]_<compression or nocomp>[_shardIofK]_<timestamp>"""
        model = self.model.model_name
        model = Path(model.rstrip("/")).name if os.path.isdir(model) else model
        parts = [self.method, self.data.task, model.replace("/", "_")]
        if self.team.agents:
            parts.append(Path(self.team.agents).stem)
        if self.method == "latent_mas":
            parts.append(f"m{self.latent.latent_steps}")
        c = self.compression
        parts.append(f"{c.kv_policy}-{keep_text(c.kv_keep)}-{c.kv_scope}-{c.kv_positions}" if c.kv_policy != "none"
                     else "nocomp" if c.kv_quant == "none" else "fullkv")
        if c.kv_layers < 1:
            parts.append(f"layers{c.kv_layers:g}")
        if c.kv_quant != "none":
            parts.append(f"{c.kv_quant}g{c.kv_quant_group}")
        if self.data.num_shards > 1:
            parts.append(f"shard{self.data.shard_id}of{self.data.num_shards}")
        parts.append(datetime.now().strftime("%Y%m%d-%H%M%S"))
        return "_".join(parts)

    def compression_settings(self) -> dict | None:
        """The summary's `compression`: None without a policy, else the compression fields marked summary."""
        if self.compression.kv_policy == "none" and self.compression.kv_quant == "none":
            return None
        return {f.name: getattr(self.compression, f.name) for f in fields(CompressionConfig) if f.metadata["summary"]}

    def summary_settings(self) -> dict:
        """The settings summary.json repeats (n/a ones are None: prompt for baseline, latent steps but latent_mas)."""
        m = self.method
        return {"method": m, "task": self.data.task, "model": self.model.model_name,
                "prompt": self.team.prompt if m != "baseline" else None,
                "latent_steps": self.latent.latent_steps if m == "latent_mas" else None,
                "compression": self.compression_settings(), "seed": self.decoding.seed,
                "temperature": self.decoding.temperature, "max_new_tokens": self.decoding.max_new_tokens}

    def observer_label(self) -> str:
        """How heatmaps name the compression: 'snapkv k0.5, head' (the keep ratio as run names and the report's
        labels write it), or '' without a policy."""
        c = self.compression
        return f"{c.kv_policy} {keep_text(c.kv_keep)}, {c.kv_scope}" if c.kv_policy != "none" else ""


def keep_text(kv_keep: float) -> str:
    """How run names, sweep cells and report labels show a keep ratio: k0.5."""
    return f"k{kv_keep:g}"


def series_defaults() -> dict:
    """Compression settings other than policy and keep ratio, with their defaults: a report line names what differs."""
    return {f.name: f.default for f in fields(CompressionConfig)
            if f.metadata["summary"] and f.name not in ("kv_policy", "kv_keep")}


# --- the command line ------------------------------------------------------------------------------------------------

def add_settings(p: argparse.ArgumentParser, defaults: bool = True, hidden: tuple[str, ...] = ()) -> None:
    """One flag per field, grouped by section. defaults=False leaves every default out, so parsing yields only what
    was typed. `hidden`: fields whose flags are parsed but not shown in --help (a command that refuses them)."""
    for cls in SECTIONS.values():
        group = p.add_argument_group(cls.TITLE)
        for f in fields(cls):
            fl = FLAGS[f.name]
            kw = {"dest": f.name, "help": argparse.SUPPRESS if f.name in hidden else fl.meta["help"]}
            if isinstance(fl.default, bool):
                kw["action"] = "store_false" if fl.negated else "store_true"
                kw["default"] = argparse.SUPPRESS if (fl.negated or not defaults) else False
            else:
                kw.update(type=fl.meta["parse"], choices=fl.meta["choices"], metavar=fl.meta["metavar"],
                          default=fl.default if defaults else argparse.SUPPRESS)
                if fl.meta["const"] is not None:
                    kw.update(nargs="?", const=fl.meta["const"])
            group.add_argument(fl.option, *fl.meta["aliases"], **kw)


def add_run_arguments(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    """The run command's arguments: every setting, an experiment file, a run to resume."""
    add_settings(p, defaults)
    g = p.add_argument_group("experiment files and resuming")
    g.add_argument("--config", metavar="FILE", help="read settings from a YAML or JSON file whose keys are these "
                   "flags' names (see config/); flags on the command line win",
                   default=None if defaults else argparse.SUPPRESS)
    g.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run in RUN_DIR with its saved settings",
                   default=None if defaults else argparse.SUPPRESS)


def build_parser(defaults: bool = True) -> argparse.ArgumentParser:
    """The run command's flags on a plain parser (docs/flags.md and tests read it; run.py builds the CLI)."""
    p = argparse.ArgumentParser(description="LatentMAS-KV: latent multi-agent reasoning over a shared KV cache.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_run_arguments(p, defaults)
    return p


def flags_markdown() -> str:
    """The flags table of the docs, generated from the parser (a test checks the docs hold exactly this)."""
    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for action in build_parser()._actions:
        if not action.option_strings or action.dest == "help":
            continue
        flag = action.option_strings[0]
        if action.choices:
            flag += " {" + ",".join(map(str, action.choices)) + "}"
        shown = action.default not in (None, argparse.SUPPRESS) and action.default is not False  # 0 is shown
        default = f"`{action.default}`" if shown else ""
        text = action.help.replace("|", "/").replace("<", "&lt;")
        rows.append(f"| `{flag}` | {default} | {text} |")
    return "\n".join(rows)


@dataclass
class Invocation:
    """What a command line asks for: the settings given (typed, or in the --config file; typed wins), the file, and
    the run directory to resume."""

    given: dict
    config_file: str | None = None
    resume: str | None = None


def invocation(typed: dict) -> Invocation:
    """What the run command's parsed flags ask for (`typed`: only what was typed; keys other than settings, --config
    and --resume are ignored). The --config file is read and checked here."""
    config_file, resume = typed.get("config"), typed.get("resume")
    from_file = read_experiment_file(config_file) if config_file else {}
    return Invocation({**from_file, **{k: v for k, v in typed.items() if k in FLAGS}}, config_file, resume)


def parse_command_line(argv: list[str]) -> Invocation:
    return invocation(vars(build_parser(defaults=False).parse_args(argv)))


def read_mapping(path: Path, label: str = "--config") -> dict:
    """The mapping in an experiment or sweep file, read strictly (strictfiles: duplicate keys, alias expansion and
    size are refused in one line naming the file)."""
    import strictfiles

    kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
    try:
        data = strictfiles.load(path)
    except FileNotFoundError:
        raise ConfigError(f"{label} {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{label} {path}: cannot read it ({getattr(e, 'strerror', None) or clip(e)})") from None
    except strictfiles.DocumentError as e:
        raise ConfigError(f"{label} {path}: {e}" if str(e).startswith("not valid") else
                          f"{label} {path}: not a usable {kind} file: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{label} {path}: give a mapping of flag names to values (method: latent_mas, ...)")
    return data


def read_experiment_file(path: str) -> dict:
    """{field: value} from an experiment file: keys are flag names (any spelling, with or without --), flat or under
    a section name (compression: {kv_policy: knorm}); values are checked as the command line checks them."""
    path = Path(path)
    return experiment_values(read_mapping(path), path)


def experiment_values(mapping: dict, path: Path, lists: bool = False, label: str = "--config") -> dict:
    """{field: value} from the mapping of an experiment file (see read_experiment_file). lists (sweep files): a list
    value is an axis of the grid, returned as a tuple of checked values. `label` starts every error message."""
    values: dict = {}
    for key, value in mapping.items():
        if key in SECTIONS and isinstance(value, dict):
            for k, v in value.items():
                name = _setting_name(path, k, label)
                if FLAGS[name].section != key:
                    raise ConfigError(f"{label} {path}: {k} belongs to section {FLAGS[name].section}, not {key}")
                values[name] = _file_values(path, str(k), name, v, lists, label)
        else:
            name = _setting_name(path, key, label)
            values[name] = _file_values(path, str(key), name, value, lists, label)
    return values


def _file_values(path: Path, key: str, name: str, value, lists: bool, label: str):
    if not (lists and isinstance(value, list)):
        return _file_value(path, key, name, value, label)
    if not value:
        raise ConfigError(f"{label} {path}: {key}: give at least one value (an empty list makes no runs)")
    return tuple(_file_value(path, key, name, v, label) for v in value)


def _setting_name(path: Path, key, label: str = "--config") -> str:
    key = clip(key, 100).removeprefix("--")  # a key of a megabyte is named, and matched, by its start
    if key in SPELLINGS:
        return SPELLINGS[key]
    if key in ("config", "resume"):
        raise ConfigError(f"{label} {path}: {key} is not a setting; give --{key} on the command line")
    close = difflib.get_close_matches(key, list(SPELLINGS) + list(SECTIONS), n=1)
    raise ConfigError(f"{label} {path}: unknown setting {shown(key)}"
                      + (f" (did you mean {close[0]}?)" if close else "")
                      + "; keys are flag names, see python run.py run --help")


def _file_value(path: Path, key: str, name: str, value, label: str = "--config"):
    fl = FLAGS[name]
    where = f"{label} {path}: {clip(key, 80)}"
    if isinstance(fl.default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: give true or false, not {shown(value)}")
        return (not value) if key.removeprefix("--") != name and fl.negated else value
    if fl.meta["const"] is not None and isinstance(value, bool):
        return fl.meta["const"] if value else fl.default
    if value is None:
        if fl.default is None:
            return None
        raise ConfigError(f"{where}: needs a value (default: {fl.default!r})")
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{where}: give one value, not {type(value).__name__} {shown(value)}")
    parse = fl.meta["parse"] or str
    try:
        value = parse(str(value))
    except (argparse.ArgumentTypeError, ValueError) as e:
        raise ConfigError(f"{where}: {clip(e)}") from None
    if fl.meta["choices"] and value not in fl.meta["choices"]:
        raise ConfigError(f"{where}: {shown(value)} is not one of {', '.join(map(str, fl.meta['choices']))}")
    return value


def resumed(saved_args: dict, given: dict, run_dir: str) -> RunConfig:
    """--resume DIR: the saved run's settings, with the ones given now on top. A given setting that changes results
    and differs from the saved run is refused: the records on disk were made without it. The saved settings are
    checked first with the rules of a new run (a hand-edited or damaged config.json ends here in one line, before
    anything loads)."""
    saved = saved_run(saved_args, run_dir)
    changed = [f"--{k} {v!r} (saved: {saved.get(k)!r})" for k, v in given.items()
               if k not in RUNTIME and v != saved.get(k)]
    if changed:
        it = "them" if len(changed) > 1 else "it"
        raise ConfigError(f"--resume {run_dir}: {', '.join(changed)} would change the results; drop {it} to continue "
                          f"the saved run, or start a new run with {it}")
    return saved.updated(given)


def saved_run(saved_args: dict, run_dir: str) -> RunConfig:
    """The settings in a run's config.json ("args"), each value checked as a flag's value is and the whole checked
    as a new run is (normalize, check); keys that no setting has any more are ignored (older runs)."""
    path = Path(run_dir) / "config.json"
    values = {k: _file_value(path, k, k, v, "--resume") for k, v in saved_args.items() if k in FLAGS}
    cfg = RunConfig.from_saved(values)
    if cfg.method is None:
        raise ConfigError(f"--resume {path}: it names no method; it is not a run's config: start a new run")
    # what a new run would count as given: the saved values that differ from the defaults
    given = {k: v for k, v in values.items() if v != FLAGS[k].default}
    try:
        probe = replace(cfg, compression=replace(cfg.compression), data=replace(cfg.data))  # normalize edits these
        normalize(probe)
        check(probe, given)
    except ConfigError as e:
        raise ConfigError(f"--resume {path}: the saved settings are refused: {e}") from None
    return cfg


def new_run(given: dict) -> RunConfig:
    if given.get("method") is None:
        raise ConfigError("--method is required (baseline, text_mas or latent_mas), or --resume RUN_DIR")
    return RunConfig().updated(given)


# --- combinations: what is implied, refused, or warned about ---------------------------------------------------------

def normalize(cfg: RunConfig) -> None:
    """What one setting implies for another: --knn_filter picks the policy, --data_path the file source (a data
    source that cannot work with the data path is refused here, by registry.resolve_source's rules)."""
    c = cfg.compression
    if c.knn_filter:
        seed_policy = "random" if c.knn_strategy == "random" else f"knn-{c.knn_strategy}"
        if c.kv_policy not in ("none", seed_policy):
            raise ConfigError(f"--knn_filter --knn_strategy {c.knn_strategy} means --kv_policy {seed_policy}, "
                              f"not {c.kv_policy}; give one of them")
        c.kv_policy = seed_policy
    cfg.data.data_source, problem = resolve_source(cfg.data.data_source, cfg.data.data_path)
    if problem:
        raise ConfigError(problem)
    lat = cfg.latent
    if lat.latent_space_realign:
        if lat.realign not in ("norm", "ridge"):
            raise ConfigError(f"--latent_space_realign means --realign ridge, not {lat.realign}; give one of them")
        lat.realign = "ridge"
    if cfg.team.agents and ("{" in cfg.team.agents):
        cfg.team.agents = agents_path(cfg.team.agents, cfg.team.prompt if cfg.method != "baseline" else "baseline",
                                      cfg.data.task)


def agents_path(template: str, prompt: str, task: str) -> str:
    """--agents with {prompt} / {task} filled in (an imported folder of <prompt>_<task>.yaml teams)."""
    try:
        return template.format(prompt=prompt, task=task)
    except (KeyError, IndexError, ValueError):
        raise ConfigError(f"--agents {template}: only {{prompt}} and {{task}} may stand in braces") from None


def check(cfg: RunConfig, given: dict) -> list[str]:
    """Refuse (ConfigError, one line) what cannot work or was given where it does nothing; return one warning per
    given setting that is merely ignored. A setting counts as given when typed or in the --config file (a switch
    given as false is not given); settings left at their defaults are never flagged.

    Refused: the cache's settings (--kv_policy, --fidelity, --show_heatmaps, --save_embeddings, --first_agent_text,
    --think, --latent_space_realign, --include_old_prompts, --handoff, --zero_steps_judger) for a method other than
    latent_mas, compression knobs without a policy (--kv_positions goes with a --handoff cut too), --knn_strategy
    without --knn_filter, --kv_query with a policy that takes no query. Warned: --latent_steps and --cross_model for
    baseline / text_mas and --text_mas_context_length for other methods (scripts loop over methods with one set of
    flags), --prompt for baseline, the code-sandbox flags on a task that is not code."""
    m, c = cfg.method, cfg.compression

    def given_(name: str) -> bool:
        switch = isinstance(FLAGS[name].default, bool) or FLAGS[name].meta["const"] is not None
        return name in given and not (switch and given[name] == FLAGS[name].default)

    if m != "latent_mas":
        for name in ("kv_policy", "fidelity", "show_heatmaps", "save_embeddings"):
            if cfg.get(name) not in ("none", False):
                raise ConfigError(f"--{name} works on the shared cache of --method latent_mas, not {m}")
        if cfg.team.first_agent_text:
            raise ConfigError("--first_agent_text applies to --method latent_mas (text_mas agents always write)")
        for name in ("think", "latent_space_realign", "realign", "include_old_prompts", "handoff",
                     "zero_steps_judger"):
            if given_(name):
                raise ConfigError(f"--{name} does nothing for --method {m}: it applies to latent_mas; drop it")
    problem = query_problem(c.kv_policy, c.kv_query)
    if problem:
        raise ConfigError(problem)
    knobs = [f"--{n}" for n in ("kv_keep", "kv_min_keep", "kv_scope", "kv_query", "kv_protect", "kv_positions",
                                "kv_layers") if given_(n)]
    if c.kv_policy == "none" and cfg.latent.handoff != "all" and knobs == ["--kv_positions"]:
        knobs = []  # the hand-off cut drops entries too: --kv_positions says where the next agent continues
    if c.kv_policy == "none" and knobs:
        one = len(knobs) == 1
        raise ConfigError(f"{', '.join(knobs)} {'does' if one else 'do'} nothing without a policy: give --kv_policy "
                          f"(or --knn_filter), or drop {'it' if one else 'them'}")
    if c.kv_policy == "none" and c.kv_quant == "none" and given_("compress_at"):
        raise ConfigError("--compress_at does nothing without a policy or --kv_quant: give one, or drop it")
    if given_("kv_quant_group") and c.kv_quant == "none":
        raise ConfigError("--kv_quant_group does nothing without --kv_quant int8 / int4: give it, or drop the group")
    kvcomm = c.kv_policy == "kvcomm" or c.kv_layers < 1
    extra = [f"--{n}" for n in ("kvcomm_alpha", "kvcomm_mu", "kvcomm_sigma") if given_(n)]
    if extra and not kvcomm:
        raise ConfigError(f"{', '.join(extra)}: KVComm's settings need layer selection (--kv_policy kvcomm, or "
                          "--kv_layers below 1 with a token policy)")
    if c.kv_policy == "kvcomm":
        useless = [f"--{n}" for n in ("kv_scope", "kv_min_keep", "kv_protect", "kv_positions", "kv_layers")
                   if given_(n)]
        if useless:
            raise ConfigError(f"{', '.join(useless)} do(es) nothing with --kv_policy kvcomm (it keeps every entry in "
                              "the selected layers; --kv_keep is their share): drop it, or give a token policy with "
                              "--kv_layers")
    if given_("knn_strategy") and not c.knn_filter:
        raise ConfigError("--knn_strategy goes with --knn_filter (the seed's switch): give both, or --kv_policy")
    if cfg.output.log_with:
        from trackers import missing, parse_names

        problem = missing(parse_names(cfg.output.log_with))
        if problem:
            raise ConfigError(problem)
    if cfg.output.log_dir and not cfg.output.log_with:
        raise ConfigError("--log_dir goes with --log_with (the trackers that write there)")

    warnings = []
    if m != "latent_mas" and given_("latent_steps"):
        warnings.append(f"--latent_steps does nothing for --method {m} (latent_mas only); ignored")
    if m != "latent_mas" and given_("cross_model"):
        warnings.append(f"--cross_model does nothing for --method {m} (latent_mas teams of several models); ignored")
    if m != "text_mas" and given_("text_mas_context_length"):
        warnings.append(f"--text_mas_context_length does nothing for --method {m} (text_mas only); ignored")
    if m == "baseline" and given_("prompt"):
        warnings.append("--prompt does nothing for --method baseline (one agent, no team); ignored")
    if TASKS[cfg.data.task].answer_type != "code":
        warnings += [f"--{n} does nothing for --task {cfg.data.task} (code tasks only); ignored"
                     for n in ("eval_workers", "code_timeout_s", "code_memory_mb") if given_(n)]
    return warnings
