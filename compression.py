"""KV-cache compression at agent hand-offs.

A policy is a small dataclass whose `score` says how much each cached entry is worth keeping, as a tensor
(L', B, H', T) with L' in {1, layers} and H' in {1, KV heads}; higher is kept. Everything else lives once in
`Compressor`: the budget, the protected entries (the most recent ones, optionally every latent step), the
selection scope (shared / per layer / per KV head), and the gather with its position handling (kv_state.select).
Adding a policy = one class here, one line in `POLICIES`, one line in registry.POLICIES; the test matrix picks it up.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from kv_state import LATENT, KVState, extend, rollback, select

SCOPES = ("shared", "layer", "head")
QUERIES = ("embed-mean", "attention")


class CompressionError(Exception):
    """A compression setting cannot work with this model; the message names the fix."""


@dataclass
class HandOff:
    """What a policy may look at: the cache so far and the next agent's prompt."""

    wrapper: object  # models.ModelWrapper
    state: KVState
    next_prompt: object  # models.Encoded
    scope: str
    generators: list[torch.Generator]
    _attention: dict = field(default_factory=dict, repr=False)

    @property
    def model(self):
        return self.wrapper.model

    @property
    def device(self):
        """Where scores go: the device of the state's masks. With --device_map each layer's keys stay on their own
        device; a policy scores a layer there and moves only the (B, H, T) result."""
        return self.state.mask.device

    def keys(self) -> list[torch.Tensor]:
        return [k.float() for k, _ in self.state.layer_tensors()]

    def attention(self, last: int | None = None) -> list[torch.Tensor]:
        """Per layer, the attention (B, H_kv, Lq, T) that the next prompt's real queries pay to each cached entry,
        summed over the query heads of each KV group; rows of padding queries are zero. With `last`, only the last
        `last` queries (Lq = last): each query's softmax is its own, so these rows are exact. Computed once."""
        if last not in self._attention:
            self._attention[last] = _prompt_attention(self.model, self.state, self.next_prompt, last)
        return self._attention[last]


def _attention_modules(model) -> list:
    layers = getattr(model.base_model, "layers", None)
    attns = [getattr(layer, "self_attn", None) for layer in layers] if layers is not None else []
    if not attns or any(a is None or not hasattr(a, "q_proj") for a in attns):
        raise CompressionError("--kv_query attention / snapkv need decoder layers with self_attn.q_proj "
                               f"({type(model).__name__} has none); use --kv_query embed-mean or another policy")
    return attns


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@torch.no_grad()
def _prompt_attention(model, state: KVState, enc, last: int | None = None) -> list[torch.Tensor]:
    """Run the next prompt on the cache in a scoring pass (rolled back afterwards), rebuild each layer's queries
    (projection, norm, RoPE at their real positions) and softmax them against the keys under the real mask; with
    `last`, only the last `last` queries."""
    attns = _attention_modules(model)
    queries: dict[int, torch.Tensor] = {}

    def capture(i, module, args, kwargs):
        h = kwargs.get("hidden_states", args[0] if args else None)
        cos, sin = kwargs["position_embeddings"]
        q = module.q_proj(h).view(*h.shape[:-1], -1, module.head_dim)
        if hasattr(module, "q_norm"):
            q = module.q_norm(q)
        q = q.transpose(1, 2).float()
        queries[i] = q * cos[:, None].float() + _rotate_half(q) * sin[:, None].float()

    hooks = [a.register_forward_pre_hook(lambda m, a_, k, i=i: capture(i, m, a_, k), with_kwargs=True)
             for i, a in enumerate(attns)]
    past_len, past_mask = state.length, state.mask.bool()
    try:
        with rollback(state):
            extend(model, state, input_ids=enc.ids, new_mask=enc.mask, want="hidden")
            keys = [k for k, _ in state.layer_tensors()]
            n = enc.ids.shape[1]
            lq = min(last or n, n)
            causal = torch.ones(n, n, dtype=torch.bool, device=past_mask.device).tril()[n - lq:]
            allowed = torch.cat([past_mask[:, None, :].expand(-1, lq, -1),
                                 causal[None] & enc.mask.bool()[:, None, :]], dim=2)  # (B, Lq, T + n)
            out = []
            for i, attn in enumerate(attns):
                # each layer is scored on its own device (--device_map); the result stays there
                q, k = queries[i][:, :, n - lq:], keys[i].float()
                allowed_i, real_q = allowed.to(k.device), enc.mask[:, n - lq:].to(k.device)
                b, hq, _, d = q.shape
                hk = k.shape[1]
                logits = (q.view(b, hk, hq // hk, lq, d) @ k[:, :, None].transpose(-1, -2)) * getattr(
                    attn, "scaling", d ** -0.5)
                logits = logits.masked_fill(~allowed_i[:, None, None], float("-inf"))
                probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)[..., :past_len]
                probs = probs * real_q[:, None, None, :, None]
                out.append(probs.sum(dim=2))  # (B, H_kv, Lq, T)
    finally:
        for hk_ in hooks:
            hk_.remove()
    return out


def _fit_query(q: torch.Tensor, d: int, n_kv: int) -> torch.Tensor:
    """Bring a (B, D) embedding to the key width d as the seed did: average its d-wide chunks (heads)."""
    width = q.shape[-1]
    if width == d:
        return q
    if width % d:
        raise CompressionError(f"hidden size {width} is not a multiple of head_dim {d}: --kv_query embed-mean cannot "
                               "compare them; use --kv_query attention or another policy")
    return q.view(q.shape[0], -1, d).mean(dim=1)


# --- policies ----------------------------------------------------------------------------------------------------

@dataclass
class Knn:
    """The seed's kNN filter (kNN-LatentMAS): cosine similarity of cached keys to a query of the next agent.

    query "embed-mean": mean input embedding of the next prompt (pads excluded); with scope shared, compared with
    the head-averaged keys of the middle layer, exactly as the seed; per layer / head, with each layer's keys.
    query "attention": the attention the next prompt's real queries pay to each entry, per layer and KV head.
    strategy "top" keeps the most similar entries, "bottom" the least similar.
    """

    strategy: str = "top"
    query: str = "embed-mean"

    def score(self, h: HandOff) -> torch.Tensor:
        if self.query == "attention":
            n_real = h.next_prompt.mask.sum(1).clamp_min(1)[:, None, None].to(h.device)
            s = torch.stack([a.sum(dim=2).to(h.device) / n_real for a in h.attention()])
        else:
            keys = h.keys()
            q = h.wrapper.embed_mean(h.next_prompt).float()
            d, n_kv = keys[0].shape[-1], keys[0].shape[1]
            q = F.normalize(_fit_query(q, d, n_kv), dim=-1)
            if h.scope == "shared":
                kbar = F.normalize(keys[len(keys) // 2].mean(dim=1), dim=-1)  # (B, T, d)
                s = torch.einsum("btd,bd->bt", kbar, q.to(kbar.device)).to(h.device)[None, :, None, :]
            else:
                s = torch.stack([torch.einsum("bhtd,bd->bht", F.normalize(k, dim=-1), q.to(k.device)).to(h.device)
                                 for k in keys])
        return s if self.strategy == "top" else -s


@dataclass
class SnapKV:
    """SnapKV (Li et al. 2024, arXiv 2404.14469): attention from an observation window (the last `window` tokens of
    the next agent's prompt), summed and max-pooled over neighbouring entries, per layer and KV head."""

    window: int = 32
    kernel: int = 7

    def score(self, h: HandOff) -> torch.Tensor:
        s = torch.stack([a.sum(dim=2).to(h.device) for a in h.attention(last=self.window)])  # (L, B, H, T)
        # pool over each row's real entries only: padding between agents' blocks must not join neighbours
        pooled = torch.zeros_like(s)
        for b in range(s.shape[1]):
            cols = h.state.mask[b].nonzero().squeeze(1)
            x = s[:, b][..., cols]  # (L, H, n)
            x = F.max_pool1d(x.reshape(-1, 1, x.shape[-1]), self.kernel, stride=1, padding=self.kernel // 2)
            pooled[:, b, :, cols] = x.reshape(s.shape[0], s.shape[2], -1)
        return pooled


@dataclass
class Streaming:
    """StreamingLLM (Xiao et al. 2023, arXiv 2309.17453): keep the first `sinks` entries and the most recent ones."""

    sinks: int = 4

    def score(self, h: HandOff) -> torch.Tensor:
        sink = (h.state.mask.cumsum(dim=1) <= self.sinks) & (h.state.mask == 1)
        return h.state.pos.float() + sink[None, :, None, :].float() * 1e9


@dataclass
class Knorm:
    """Keep keys with a low L2 norm (Devoto et al. 2024, arXiv 2406.11430), per layer and KV head."""

    def score(self, h: HandOff) -> torch.Tensor:
        return -torch.stack([k.norm(dim=-1).to(h.device) for k in h.keys()])


@dataclass
class KeyDiff:
    """KeyDiff (Park et al. 2025, arXiv 2504.15364): keep keys far (in cosine) from the mean key of their head."""

    def score(self, h: HandOff) -> torch.Tensor:
        out = []
        for k in h.keys():
            m = h.state.mask[:, None, :, None].float().to(k.device)
            mean = (k * m).sum(dim=2, keepdim=True) / m.sum(dim=2, keepdim=True).clamp_min(1)
            out.append(-F.cosine_similarity(k, mean, dim=-1).to(h.device))
        return torch.stack(out)


@dataclass
class Random:
    """Keep a uniformly random subset (the seed's `random` strategy), from a stream per item."""

    def score(self, h: HandOff) -> torch.Tensor:
        # one draw per real entry, in cache order, so padding does not shift the stream
        s = torch.zeros(h.state.mask.shape, dtype=torch.float32)
        for b, g in enumerate(h.generators):
            valid = h.state.mask[b].cpu() == 1
            s[b, valid] = torch.rand(int(valid.sum()), generator=g)
        return s.to(h.state.mask.device)[None, :, None, :]


POLICIES = {
    "knn-top": lambda query: Knn("top", query),
    "knn-bottom": lambda query: Knn("bottom", query),
    "snapkv": lambda query: SnapKV(),
    "streaming": lambda query: Streaming(),
    "knorm": lambda query: Knorm(),
    "keydiff": lambda query: KeyDiff(),
    "random": lambda query: Random(),
}


# --- the shared mechanism ------------------------------------------------------------------------------------------

@dataclass
class Compressor:
    policy_name: str
    keep: float = 0.8
    scope: str = "shared"
    min_keep: int = 5
    protect: str = "none"  # "latents": never drop latent-step entries
    positions: str = "original"
    at: str = "every"  # "every" hand-off, or only before the "judger"
    query: str = "embed-mean"

    def __post_init__(self):
        if self.policy_name not in POLICIES:
            raise CompressionError(f"unknown policy {self.policy_name!r}; choose from {', '.join(POLICIES)}")
        if not 0 < self.keep <= 1:
            raise CompressionError(f"keep ratio {self.keep} is outside (0, 1]")
        self.policy = POLICIES[self.policy_name](self.query)

    def settings(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "policy"}

    def check(self, model) -> None:
        """Fail before the run if this model cannot give what the policy needs."""
        if self.query == "attention" or self.policy_name == "snapkv":
            _attention_modules(model)
        if self.positions == "rerotate":
            rotary = getattr(model.base_model, "rotary_emb", None)
            if rotary is None or getattr(rotary, "attention_scaling", 1.0) != 1.0:
                raise CompressionError("--kv_positions rerotate needs plain RoPE; use --kv_positions original")

    def applies(self, agent_index: int, n_agents: int) -> bool:
        if agent_index == 0:
            return False
        return self.at == "every" or agent_index == n_agents - 1

    def budgets(self, state: KVState) -> torch.Tensor:
        valid = state.mask.sum(dim=1)
        budget = (valid.double() * self.keep).floor().long().clamp_min(self.min_keep)
        return torch.minimum(budget, valid)

    def protected(self, state: KVState) -> torch.Tensor:
        """(L', B, H', T) entries that are always kept: the `min_keep` most recent, and latents if asked."""
        valid = state.mask == 1
        from_end = valid.flip(1).cumsum(dim=1).flip(1)  # 1 for a row's newest real entry
        prot = (valid & (from_end <= self.min_keep))[None, :, None, :]
        if self.protect == "latents":
            prot = prot | ((state.kinds == LATENT) & valid[None, :, None, :])
        return prot

    @torch.no_grad()
    def __call__(self, wrapper, state: KVState, next_prompt,
                 generators: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor] | None:
        if state.length == 0:
            return
        prot = self.protected(state)
        budget = torch.maximum(self.budgets(state), prot[0, :, 0, :].sum(dim=1))
        if bool((budget == state.mask.sum(dim=1)).all()):
            return  # keeping everything: leave the cache untouched, bit for bit
        s = self.policy.score(HandOff(wrapper, state, next_prompt, self.scope, generators)).float()
        if self.scope == "shared":
            s = s.mean(dim=(0, 2), keepdim=True)
        elif self.scope == "layer":
            s = s.mean(dim=2, keepdim=True)
        s = s.masked_fill(state.mask[None, :, None, :] == 0, -math.inf).masked_fill(prot, math.inf)
        k = int(budget.max())
        # a stable sort breaks ties (max-pooled scores have plateaus) by cache order, which padding does not change
        top = s.argsort(dim=-1, descending=True, stable=True)[..., :k]
        slot = torch.arange(k, device=s.device)
        real = (slot[None, :] < budget[:, None])[None, :, None, :]
        # sort kept entries back into cache order; unused slots of short rows go first, as left padding
        order = torch.where(real, top, torch.full_like(top, -1)).sort(dim=-1).values
        keep = slot[None, :] >= (k - budget)[:, None]
        select(wrapper.model, state, order.clamp_min(0), keep.long(), self.positions)
        return order.clamp_min(0), keep  # for observers: the kept columns of the cache before, and the real slots


def compressor_from_args(args) -> Compressor | None:
    if not args.kv_policy or args.kv_policy == "none":
        return None
    return Compressor(args.kv_policy, keep=args.kv_keep, scope=args.kv_scope, min_keep=args.kv_min_keep,
                      protect=args.kv_protect, positions=args.kv_positions, at=args.compress_at, query=args.kv_query)
