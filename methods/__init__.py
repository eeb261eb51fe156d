"""Methods: each turns a batch of items into one record per item (see DESIGN.md "Output a user reads")."""
from __future__ import annotations

from dataclasses import dataclass

from grading import extract_answer, is_correct
from prompts import answer_instruction


@dataclass
class MethodConfig:
    """The run settings a method reads (a view of the CLI arguments)."""

    answer_type: str
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    prompt: str = "sequential"
    latent_steps: int = 10
    think: bool = False
    text_mas_context_length: int = -1


def answer_for(item, cfg: MethodConfig) -> str:
    return answer_instruction(cfg.answer_type, item.meta.get("n_options"))


def agent_record(name: str, role: str, prompt_tokens: int, latent_steps: int, output_tokens: int,
                 kv_in: tuple[int, int], kv_out: tuple[int, int], time_s: float, output: str | None = None) -> dict:
    rec = {"name": name, "role": role, "prompt_tokens": prompt_tokens, "latent_steps": latent_steps,
           "output_tokens": output_tokens, "kv_tokens_in": kv_in[0], "kv_tokens_out": kv_out[0],
           "kv_bytes_in": kv_in[1], "kv_bytes_out": kv_out[1], "time_s": round(time_s, 4)}
    if output is not None:
        rec["output"] = output
    return rec


def item_record(item, output: str, agents: list[dict], cfg: MethodConfig) -> dict:
    prediction, path = extract_answer(output, cfg.answer_type)
    return {"index": item.index, "question": item.question, "gold": item.gold, "prediction": prediction,
            "correct": is_correct(prediction, item.gold, cfg.answer_type), "extraction": path, "output": output,
            "generated_tokens": sum(a["output_tokens"] for a in agents),
            "time_s": round(sum(a["time_s"] for a in agents), 4), "agents": agents}


def get_method(name: str):
    """The run_batch function of a method (imported lazily so that one method's imports cannot break another)."""
    from importlib import import_module

    return import_module(f"methods.{name}").run_batch
