"""Methods: each turns a batch of items into one record per item (see DESIGN.md "Output a user reads")."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from grading import extract_answer, grade_code, is_correct
from prompts import answer_instruction


@dataclass
class MethodConfig:
    """What a method reads: the run's settings of the same name (from_run fills them from config.RunConfig; a field
    named differently says which setting in its metadata) and the run's objects (compressor, observer, team)."""

    answer_type: str
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    prompt: str = "sequential"
    latent_steps: int = 10
    think: str | None = None  # latent_mas: text appended to every agent's rendered prompt
    handoff: str = "all"  # latent_mas chain: all | latent_only | sequential_info_only (config.HANDOFFS)
    zero_steps_judger: str = "cache"  # latent_mas with latent_steps 0: "cache" or "empty" (the reference code)
    kv_positions: str = "original"  # positions after a hand-off cut (kv_state.POSITION_MODES)
    trace: bool = False  # records hold messages, rendered text, token ids, kept entries (see trace_fields)
    text_mas_context_length: int = -1
    eval_workers: int | None = None  # code tasks: sandbox processes at once (None: min(4, CPUs))
    code_timeout_s: float | None = None  # code tasks: wall-clock limit per sample (None: code_eval's default)
    code_memory_mb: int | None = None  # code tasks: address-space limit per sample (None: code_eval's default)
    compressor: object = None  # compression.Compressor: prunes the shared cache at hand-offs (latent_mas)
    fidelity: bool = False  # latent_mas: also run the uncompressed team and score the judger against it
    stacked_prompts: bool = field(default=False, metadata={"setting": "include_old_prompts"})  # seed: stacked
    observer: object = None  # observe.Observer (latent_mas): look() before each hand-off, record() after each agent
    team: object = None  # teams.Team; None: the shipped team of `prompt`
    model_name: str | None = None  # the run's --model_name: what records name as an agent's model by default
    models: object = None  # models.TeamModels (a team of several models); None: every agent on the run's wrapper

    @classmethod
    def from_run(cls, run, answer_type: str, **objects) -> MethodConfig:
        """The settings of `run` (a config.RunConfig) that a method reads, by field name, plus `objects`."""
        flat = run.flat()
        settings = {f.name: flat[f.metadata.get("setting", f.name)] for f in fields(cls)
                    if f.metadata.get("setting", f.name) in flat}
        return cls(answer_type=answer_type, **settings, **objects)

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
