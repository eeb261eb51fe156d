"""Agent team and prompt templates.

Templates are plain strings with `{question}`, `{context}` (text handed on by earlier agents; text_mas only) and
`{answer}` (the task's answer-format instruction). Latent agents get no text context: what earlier agents thought
reaches them only through the shared KV cache.
"""
from __future__ import annotations

from dataclasses import dataclass

TOPOLOGIES = ("sequential", "hierarchical")


@dataclass(frozen=True)
class Agent:
    name: str
    role: str


# The last agent is the one that writes the answer.
DEFAULT_TEAM = (Agent("Planner", "planner"), Agent("Critic", "critic"), Agent("Refiner", "refiner"),
                Agent("Judger", "judger"))
HIERARCHICAL_NAMES = {"planner": "Math Agent", "critic": "Science Agent", "refiner": "Code Agent",
                      "judger": "Summarizer"}


def answer_instruction(answer_type: str, n_options: int | None = None, entry_point: str | None = None) -> str:
    """The answer-format sentence every answering agent gets, per answer type (grading.py reads this format)."""
    if answer_type == "number":
        return ("Reason step by step, then write the final answer as a plain number inside \\boxed{}, "
                "for example \\boxed{42}.")
    if answer_type == "integer":
        return ("Reason step by step, then write the final answer, an integer from 0 to 999, inside \\boxed{}, "
                "for example \\boxed{42}.")
    if answer_type == "letter":
        letters = ", ".join(chr(ord("A") + i) for i in range(n_options or 4))
        return ("Reason step by step, then write the letter of the correct option (one of " + letters +
                ") inside \\boxed{}, for example \\boxed{B}. Put nothing else in the box.")
    if answer_type == "option":
        numbers = " or ".join(str(i + 1) for i in range(n_options or 2))
        return ("Reason step by step, then write the number of the correct option (" + numbers +
                ") inside \\boxed{}, for example \\boxed{1}. Put nothing else in the box.")
    if answer_type == "code":
        name = f"the function `{entry_point}`" if entry_point else "the function"
        return ("Reason step by step, then write your final solution as self-contained Python code in one "
                "markdown code block that starts with ```python and ends with ```: " + name + " with the "
                "signature asked for, plus the imports and helpers it needs. Do not include tests, example "
                "usage or input() calls in that block.")
    raise ValueError(f"no answer instruction for answer type {answer_type!r}")


BASELINE = "Question:\n{question}\n\n{answer}"

_SOLVER = ("You are the final solver of a team of agents (planner, critic, refiner, solver). {handover}\n\n"
           "Question:\n{question}\n\n{answer}")

TEMPLATES: dict[tuple[str, str, str], str] = {
    # --- latent, sequential: each agent works on the cache of the ones before it
    ("latent", "sequential", "planner"):
        "You are the Planner of a team of agents. Read the question and write a short step-by-step plan for "
        "solving it, as a few bullet points. Do not solve it and do not give the final answer.\n\n"
        "Question:\n{question}\n\nYour plan:",
    ("latent", "sequential", "critic"):
        "You are the Critic of a team of agents. The Planner's plan for the question below reaches you as latent "
        "context rather than text. Check the plan for mistakes and missing steps, then state its key points and "
        "your feedback.\n\nQuestion:\n{question}\n\nYour review:",
    ("latent", "sequential", "refiner"):
        "You are the Refiner of a team of agents. A plan and a critic's feedback on it reach you as latent "
        "context. Write an improved plan that fixes what the feedback found.\n\nQuestion:\n{question}\n\n"
        "Your refined plan:",
    ("latent", "sequential", "judger"):
        _SOLVER.replace("{handover}", "The earlier agents' reasoning reaches you as latent context; use it where "
                        "it helps and ignore it where it looks wrong."),
    # --- text, sequential: each agent reads the text the ones before it wrote
    ("text", "sequential", "planner"):
        "You are the Planner of a team of agents. Read the question and write a short step-by-step plan for "
        "solving it, as a few bullet points. Do not solve it and do not give the final answer.\n\n"
        "Question:\n{question}\n\nYour plan:",
    ("text", "sequential", "critic"):
        "You are the Critic of a team of agents. Below are the question and the Planner's plan. Check the plan "
        "for mistakes and missing steps, then state its key points and your feedback.\n\nQuestion:\n{question}"
        "\n\nPlan:\n{context}\n\nYour review:",
    ("text", "sequential", "refiner"):
        "You are the Refiner of a team of agents. Below are the question, a plan and a critic's feedback. Write "
        "an improved plan that fixes what the feedback found.\n\nQuestion:\n{question}\n\n"
        "Plan and feedback:\n{context}\n\nYour refined plan:",
    ("text", "sequential", "judger"):
        _SOLVER.replace("{handover}", "Below is what the earlier agents wrote; use it where it helps and ignore it "
                        "where it looks wrong.\n\nEarlier agents:\n{context}"),
}

# Hierarchical: three specialists solve the question independently; a summarizer decides.
for _family in ("latent", "text"):
    for _role, _field in (("planner", "math"), ("critic", "science"), ("refiner", "code")):
        TEMPLATES[(_family, "hierarchical", _role)] = (
            f"You are a {_field} specialist. Solve the question on your own.\n\nQuestion:\n{{question}}\n\n{{answer}}")
TEMPLATES[("latent", "hierarchical", "judger")] = (
    "You are the summarizer of a team of specialists who each solved the question below; their work reaches you "
    "as latent context. Weigh it, then solve the question yourself.\n\nQuestion:\n{question}\n\n{answer}")
TEMPLATES[("text", "hierarchical", "judger")] = (
    "You are the summarizer of a team of specialists who each solved the question below. Their answers:\n\n"
    "{context}\n\nWeigh them, then solve the question yourself.\n\nQuestion:\n{question}\n\n{answer}")


def baseline_prompt(question: str, answer: str) -> str:
    return BASELINE.format(question=question, answer=answer)


def agent_prompt(family: str, topology: str, role: str, question: str, answer: str, context: str = "") -> str:
    return TEMPLATES[(family, topology, role)].format(question=question, context=context, answer=answer)


STACKED_HEAD = "The previous agent ({name}) was given this prompt:\n---\n{prompt}\n---\n\n"


def team_prompts(family: str, topology: str, team, question: str, answer: str, stacked: bool = False) -> list[str]:
    """User prompts of a latent team in order. `stacked` (the seed's --include_old_prompts) opens each prompt with
    the previous agent's full prompt, recursively, so the next agent's query looks like the cache it reads."""
    prompts: list[str] = []
    for k, agent in enumerate(team):
        text = agent_prompt(family, topology, agent.role, question, answer)
        if stacked and k > 0:
            text = STACKED_HEAD.format(name=team[k - 1].name, prompt=prompts[-1]) + text
        prompts.append(text)
    return prompts


def context_label(topology: str, agent: Agent) -> str:
    """How an agent's text is labelled when handed on in text_mas."""
    return HIERARCHICAL_NAMES.get(agent.role, agent.name) if topology == "hierarchical" else agent.name
