"""Methods: each turns a batch of items into one record per item (the record's keys: docs/output.md)."""
from __future__ import annotations

from config import FLAGS, RunConfig
from grading import extract_answer, grade_code, is_correct
from prompts import answer_instruction


class MethodConfig:
    """What a method reads: the run's typed settings (`run`, a config.RunConfig; `cfg.temperature` is
    run.decoding.temperature: every setting by its flag name, nothing copied or renamed), the task's answer type, and
    the run's objects: compressor (compression.Compressor, latent_mas), observer (observe.Observer, latent_mas),
    team (teams.Team; None: the shipped team of --prompt), models (models.TeamModels when the team names models)."""

    def __init__(self, answer_type: str, run: RunConfig | None = None, *, compressor=None, observer=None, team=None,
                 models=None, **settings):
        """`settings`: flag names set on top of `run` (default: the defaults), e.g. MethodConfig("number",
        max_new_tokens=8, temperature=0)."""
        self.answer_type, self.run = answer_type, (run or RunConfig()).updated(settings)
        self.compressor, self.observer, self.team, self.models = compressor, observer, team, models

    def __getattr__(self, name: str):
        if name in FLAGS:  # only reached for names that are not attributes: the settings
            return self.run.get(name)
        raise AttributeError(name)

    @classmethod
    def from_run(cls, run: RunConfig, answer_type: str, **objects) -> MethodConfig:
        return cls(answer_type, run, **objects)

    def get_team(self):
        from teams import default_team

        return self.team if self.team is not None else default_team(self.prompt)

    def agent_models(self, wrapper, n: int) -> tuple[list, list]:
        """Each of `n` agents' model wrapper and model name: from `models` when the team names models, else
        `wrapper` and --model_name for every agent."""
        if self.models is None:
            return [wrapper] * n, [self.model_name] * n
        return [self.models.of(k) for k in range(n)], list(self.models.names)

    @property
    def flow(self) -> str:
        """"chain" or "parallel" (see registry.TOPOLOGIES)."""
        from registry import TOPOLOGIES

        return TOPOLOGIES[self.prompt][1]


def answer_for(item, cfg: MethodConfig) -> str:
    return answer_instruction(cfg.answer_type, item.meta.get("n_options"), item.meta.get("entry_point"))


def agent_record(name: str, role: str, prompt_tokens: int, latent_steps: int, output_tokens: int,
                 kv_in: tuple[int, int], kv_out: tuple[int, int], time_s: float, output: str | None = None,
                 model: str | None = None) -> dict:
    rec = {"name": name, "role": role, **({"model": model} if model else {}), "prompt_tokens": prompt_tokens,
           "latent_steps": latent_steps,
           "output_tokens": output_tokens, "kv_tokens_in": kv_in[0], "kv_tokens_out": kv_out[0],
           "kv_bytes_in": kv_in[1], "kv_bytes_out": kv_out[1], "time_s": round(time_s, 4)}
    if output is not None:
        rec["output"] = output
    return rec


def trace_fields(wrapper, enc, i: int, user: str, system: str | None, output_ids: list[int] | None = None) -> dict:
    """What --trace adds to agent i's record: the chat messages, the exact rendered text, the ids it became (row i of
    `enc`, padding removed) and, for a writing agent, the generated ids."""
    from prompts import chat_messages

    out = {"messages": chat_messages(user, system), "rendered": enc.texts[i],
           "input_ids": enc.ids[i][enc.mask[i].bool()].tolist()}
    if output_ids is not None:
        out["output_ids"] = list(output_ids)
    return out


def item_record(item, output: str, agents: list[dict], cfg: MethodConfig) -> dict:
    """One result record. Every answer type is graded here except code, which runs in the sandbox a batch at a
    time (grade_batch, called by get_method's wrapper): until then its extraction is "pending", correct None."""
    if cfg.answer_type == "code":
        prediction, path, correct = None, "pending", None
    else:
        prediction, path = extract_answer(output, cfg.answer_type, item.meta.get("options"))
        correct = is_correct(prediction, item.gold, cfg.answer_type)
    return {"index": item.index, "question": item.question, "gold": item.gold, "prediction": prediction,
            "correct": correct, "extraction": path, "output": output,
            "generated_tokens": sum(a["output_tokens"] for a in agents),
            "time_s": round(sum(a["time_s"] for a in agents), 4), "agents": agents}


def grade_batch(items, records: list[dict], cfg: MethodConfig) -> list[dict]:
    """Finish the records of one batch: code answers are extracted and run in the sandbox, cfg.eval_workers at a
    time, which sets prediction (the code), correct, extraction and adds `execution` (status, detail, time_s,
    network_isolated). Other answer types were graded in item_record and pass through."""
    todo = [r for r in records if r.get("extraction") == "pending"]
    if not todo:
        return records
    meta = {it.index: it.meta for it in items}
    graded = grade_code([r["output"] for r in todo], [meta[r["index"]] for r in todo], workers=cfg.eval_workers,
                        timeout_s=cfg.code_timeout_s, memory_mb=cfg.code_memory_mb)
    for rec, result in zip(todo, graded):
        rec.update(result)
    return records


def get_method(name: str):
    """The run_batch function of a method, graded: run_batch(wrapper, items, cfg) -> finished records. The method
    is imported lazily so that one method's imports cannot break another."""
    from functools import wraps
    from importlib import import_module

    run_batch = import_module(f"methods.{name}").run_batch

    @wraps(run_batch)
    def run_and_grade(wrapper, items, cfg: MethodConfig) -> list[dict]:
        return grade_batch(items, run_batch(wrapper, items, cfg), cfg)

    return run_and_grade
