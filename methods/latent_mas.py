"""LatentMAS: agents share one growing KV cache; all but the last think in latent steps, the last one writes.

Hierarchical here changes the prompts only (the cache still chains), as in the reference implementation.
"""
from __future__ import annotations

from kv_state import KVState
from methods import MethodConfig, agent_record, answer_for, item_record
from prompts import DEFAULT_TEAM, agent_prompt
from utils import item_generator, now

THINK_SUFFIX = "<think>\n"


def run_batch(wrapper, items, cfg: MethodConfig, team=DEFAULT_TEAM) -> list[dict]:
    n = len(items)
    suffix = THINK_SUFFIX if cfg.think else ""
    state = KVState.empty(n, wrapper.device)
    agents: list[list[dict]] = [[] for _ in range(n)]
    texts = [""] * n
    for k, agent in enumerate(team):
        final = k == len(team) - 1
        enc = wrapper.encode([wrapper.render(agent_prompt("latent", cfg.prompt, agent.role, it.question,
                                                          answer_for(it, cfg)), suffix=suffix) for it in items])
        kv_in = list(zip(state.valid_tokens(), state.row_nbytes()))
        t0 = now(wrapper.device)
        if final:
            dec = wrapper.generate(state, enc, cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                                   [item_generator(cfg.seed, it.index) for it in items])
            texts = dec.texts
        else:
            wrapper.prefill_and_think(state, enc, cfg.latent_steps)
        share = (now(wrapper.device) - t0) / n
        kv_out = list(zip(state.valid_tokens(), state.row_nbytes()))
        for i in range(n):
            agents[i].append(agent_record(
                agent.name, agent.role, enc.lengths()[i], 0 if final else cfg.latent_steps,
                len(dec.tokens[i]) if final else 0, kv_in[i], kv_out[i], share, texts[i] if final else None))
    return [item_record(it, texts[i], agents[i], cfg) for i, it in enumerate(items)]
