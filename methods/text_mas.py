"""TextMAS: every agent writes text. In a chain each agent reads all earlier agents' text; in a parallel team the
workers answer alone and only the last agent reads them. Each agent runs on its own model (a team file's `model`):
text crosses models as it is."""
from __future__ import annotations

from kv_state import KVState
from methods import MethodConfig, agent_record, answer_for, item_record, trace_fields
from prompts import agent_prompt
from utils import item_generator, now


def cut_context(wrapper, team, context: str, n: int) -> str:
    """The handed-on text an agent sees, cut as the team says: the last n tokens (-1: all), or the reference code's
    context[:n] characters (its default -1 drops the last character), or not at all."""
    if team.context_cut == "python_slice":
        return context[:n]
    if team.context_cut == "none":
        return context
    return wrapper.truncate_tokens(context, n)


def run_batch(wrapper, items, cfg: MethodConfig) -> list[dict]:
    team = cfg.get_team()
    n = len(items)
    gens = [item_generator(cfg.seed, it.index) for it in items]
    contexts = [""] * n
    agents: list[list[dict]] = [[] for _ in range(n)]
    texts = [""] * n
    wrappers, names = cfg.agent_models(wrapper, len(team.agents))
    for k, agent in enumerate(team.agents):
        w = wrappers[k]
        final = k == len(team.agents) - 1
        sees_context = final or cfg.flow == "chain"
        prompts = [agent_prompt(agent, "text", it.question, answer_for(it, cfg),
                                cut_context(w, team, contexts[i], cfg.text_mas_context_length)
                                if sees_context else "")
                   for i, it in enumerate(items)]
        enc = w.encode([w.render(p, system=agent.system) for p in prompts])
        state = KVState.empty(n, w.device)
        t0 = now(w.device)
        dec = w.generate(state, enc, cfg.max_new_tokens, cfg.temperature, cfg.top_p, gens, prefix_key=f"text{k}")
        share = (now(w.device) - t0) / n
        kv_out = list(zip(state.valid_tokens(), state.row_nbytes()))
        for i in range(n):
            rec = agent_record(agent.name, agent.role, enc.lengths()[i], 0, len(dec.tokens[i]), (0, 0), kv_out[i],
                               share, dec.texts[i], names[k])
            if cfg.trace:
                rec.update(trace_fields(w, enc, i, prompts[i], agent.system, dec.tokens[i]))
            agents[i].append(rec)
            if not final:
                contexts[i] += team.handed_on(agent, dec.texts[i])
        texts = dec.texts
    return [item_record(it, texts[i], agents[i], cfg) for i, it in enumerate(items)]
