"""Prompt text: the task's answer-format sentence, the baseline prompt, and rendering a team's templates.

The agent templates themselves live in team files (teams/*.json, see teams.py). Latent agents get no text
context: what earlier agents thought reaches them only through the shared KV cache.
"""
from __future__ import annotations


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

STACKED_HEAD = "The previous agent ({name}) was given this prompt:\n---\n{prompt}\n---\n\n"


def baseline_prompt(question: str, answer: str) -> str:
    return BASELINE.format(question=question, answer=answer)


def chat_messages(user: str, system: str | None) -> list[dict]:
    """The chat messages of one turn, as the chat template gets them (no system message when `system` is empty)."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def agent_prompt(agent, family: str, question: str, answer: str, context: str = "") -> str:
    """One agent's user prompt (`agent`: a teams.AgentSpec; `family`: "latent" or "text")."""
    return agent.template(family).format(question=question, context=context, answer=answer)


def team_prompts(family: str, team, question: str, answer: str, stacked: bool = False) -> list[str]:
    """User prompts of a team in order, with no text context. `stacked` (the seed's --include_old_prompts) opens
    each prompt with the previous agent's full prompt, recursively, so the next agent's query looks like the
    cache it reads."""
    prompts: list[str] = []
    for k, agent in enumerate(team.agents):
        text = agent_prompt(agent, family, question, answer)
        if stacked and k > 0:
            text = STACKED_HEAD.format(name=team.agents[k - 1].name, prompt=prompts[-1]) + text
        prompts.append(text)
    return prompts
