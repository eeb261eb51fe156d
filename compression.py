"""KV-cache compression at agent hand-offs.

A policy is a small dataclass whose `score` says how much each cached entry is worth keeping, as a tensor
(L', B, H', T) with L' in {1, layers} and H' in {1, KV heads}; higher is kept. Everything else lives once in
`Compressor`: the budget, the protected entries (the most recent ones, optionally every latent step), the
selection scope (shared / per layer / per KV head), and the gather with its position handling (kv_state.select).
Adding a policy = one class here marked @policy("name") + one row in registry.POLICIES (its name, what it keeps,
the --kv_query values it reads, what it needs); the CLI, the table in docs/compression.md and every test matrix
read that list.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import architecture
from config import CompressionConfig
from errors import RunError
from kv_state import LATENT, KVState, extend, rollback, select
from kvquant import BITS
from registry import POLICIES, POSITIONS, QUERIES, SCOPES

__all__ = ["POLICIES", "QUERIES", "CompressionError", "Compressor", "HandOff", "compressor_from_args",
           "make_policy"]


class CompressionError(RunError):
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


CLASSES: dict[str, type] = {}  # --kv_policy name -> the class that scores for it (registered by @policy)


def policy(*names: str):
    """Class decorator: this class scores for these rows of registry.POLICIES (a test checks every row has one)."""
    def register(cls: type) -> type:
        for name in names:
            if name not in POLICIES:
                raise KeyError(f"{name}: no such row in registry.POLICIES")
            CLASSES[name] = cls
        return cls
    return register


@torch.no_grad()
def _prompt_attention(model, state: KVState, enc, last: int | None = None) -> list[torch.Tensor]:
    """Run the next prompt on the cache in a scoring pass (rolled back afterwards) and take, in every layer, the
    attention weights the model itself computes (its own eager attention function: RoPE, norms, soft-capping and
    sinks as the family has them) for the last `last` real queries, summed over the query heads of each KV group."""
    past_len, n = state.length, enc.ids.shape[1]
    lq = min(last or n, n)
    real_q = enc.mask[:, n - lq:]
    out: dict[int, torch.Tensor] = {}

    def capture(module, q, k, v, mask, args, kwargs):
        eager = architecture.base_attention(module, "eager")
        kwargs = dict(kwargs, dropout=0.0)
        _, w = eager(module, q[:, :, n - lq:], k, v, mask[:, :, n - lq:], *args, **kwargs)
        b, hq = w.shape[:2]
        hk = k.shape[1]
        held = k.shape[2] - n  # after layer selection a layer holds only its last `held` cached columns
        w = F.pad(w[..., :held].float(), (past_len - held, 0)) * real_q.to(w.device)[:, None, :, None]
        out[module.layer_idx] = w.view(b, hk, hq // hk, lq, past_len).sum(dim=2)  # (B, H_kv, Lq, T)

    with rollback(state), architecture.attention(model, capture=capture):
        extend(model, state, input_ids=enc.ids, new_mask=enc.mask, want="hidden")
    return [out[i] for i in sorted(out)]


def _fit_query(q: torch.Tensor, d: int) -> torch.Tensor:
    """Bring a (B, D) embedding to the key width d as the seed did: average its d-wide chunks (heads). When D is not
    a multiple of d (the seed's code then fails), the last chunk is zero-filled to width d before averaging."""
    width = q.shape[-1]
    if width == d:
        return q
    q = F.pad(q, (0, -width % d))
    return q.view(q.shape[0], -1, d).mean(dim=1)


# --- policies ----------------------------------------------------------------------------------------------------

@policy("knn-top", "knn-bottom")
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
            d = keys[0].shape[-1]
            q = F.normalize(_fit_query(q, d), dim=-1)
            if h.scope == "shared":
                kbar = F.normalize(keys[len(keys) // 2].mean(dim=1), dim=-1)  # (B, T, d)
                s = torch.einsum("btd,bd->bt", kbar, q.to(kbar.device)).to(h.device)[None, :, None, :]
            else:
                s = torch.stack([torch.einsum("bhtd,bd->bht", F.normalize(k, dim=-1), q.to(k.device)).to(h.device)
                                 for k in keys])
        return s if self.strategy == "top" else -s


@policy("snapkv")
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


@policy("streaming")
@dataclass
class Streaming:
    """StreamingLLM (Xiao et al. 2023, arXiv 2309.17453): keep the first `sinks` entries and the most recent ones."""

    sinks: int = 4

    def score(self, h: HandOff) -> torch.Tensor:
        sink = (h.state.mask.cumsum(dim=1) <= self.sinks) & (h.state.mask == 1)
        return h.state.pos.float() + sink[None, :, None, :].float() * 1e9


@policy("knorm")
@dataclass
class Knorm:
    """Keep keys with a low L2 norm (Devoto et al. 2024, arXiv 2406.11430), per layer and KV head."""

    def score(self, h: HandOff) -> torch.Tensor:
        return -torch.stack([k.norm(dim=-1).to(h.device) for k in h.keys()])


@policy("keydiff")
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


@policy("random")
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


@policy("latents-only")
@dataclass
class LatentsOnly:
    """Hand on the latent-step entries of earlier agents and drop their prompt (and text) entries: every latent entry
    outranks every other one, newest first within each kind. The keep ratio still sets how many entries go on, as for
    every policy: while the budget is at most the row's latent count only latents go on (the newest), above it the
    newest other entries fill the rest. `--kv_protect latents` with a small --kv_keep makes the protected set the
    budget: exactly the latents plus the --kv_min_keep newest entries (at a hand-off those are the previous agent's
    latent steps when --latent_steps >= --kv_min_keep)."""

    def score(self, h: HandOff) -> torch.Tensor:
        # logical positions stay far below 2**22, so in float32 the offset never swallows the recency order
        return h.state.pos.float() + (h.state.kinds == LATENT).float() * 2.0 ** 22


@policy("kvcomm")
@dataclass
class KVComm:
    """KVComm (Shi et al., ICLR 2026, arXiv 2510.03346): the next agent sees the earlier agents' entries only in the
    selected layers. A layer's importance is the attention mass the next prompt's real queries put on the cached
    entries, the row's first entry (the attention sink) left out, averaged over query heads and queries; importances
    are min-max normalised over layers and mixed with a min-max normalised Gaussian prior over depth,
    alpha * importance + (1 - alpha) * prior, centred at mu * (layers - 1) with width sigma layers; the top
    ceil(share * layers) layers (at least one) are kept, per row. Defaults (alpha 1, mu 0.5, sigma 10) are those
    of the authors' public configuration."""

    alpha: float = 1.0
    mu: float = 0.5
    sigma: float = 10.0

    def layer_scores(self, h: HandOff) -> torch.Tensor:
        """(L, B): how much each layer's cached entries matter to the next prompt, prior included."""
        att = h.attention()
        mask = h.state.mask == 1
        cols = mask.clone()
        cols[torch.arange(mask.shape[0], device=mask.device), mask.long().argmax(dim=1)] = False  # the sink
        n_q = h.next_prompt.mask.sum(dim=1).clamp_min(1).to(h.device).float()
        n_heads = architecture.describe(h.model).n_heads
        imp = torch.stack([(a.sum(dim=(1, 2)).to(h.device) * cols).sum(dim=-1) / (n_heads * n_q) for a in att])
        depth = torch.arange(imp.shape[0], dtype=torch.float32, device=h.device)
        prior = torch.exp(-0.5 * ((depth - self.mu * (imp.shape[0] - 1)) / self.sigma) ** 2)
        return self.alpha * _minmax(imp) + (1 - self.alpha) * _minmax(prior[:, None]).expand_as(imp)


def _minmax(x: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Scale each column of (L, B) to [0, 1] over L; a flat column becomes zeros (as the authors' code does)."""
    lo, hi = x.min(dim=0, keepdim=True).values, x.max(dim=0, keepdim=True).values
    return torch.where(hi - lo < eps, torch.zeros_like(x), (x - lo) / (hi - lo + eps))


def layer_count(share: float, n_layers: int) -> int:
    """Layers layer selection keeps: ceil(share * layers), at least one (the authors' rounding)."""
    return max(1, math.ceil(share * n_layers - 1e-9))


def make_policy(name: str, query: str = "embed-mean"):
    """The policy object of a registry.POLICIES row: its class here (CLASSES), its fixed arguments, and the query if it
    reads one (a policy that takes none ignores --kv_query; the CLI refuses the pair)."""
    spec = POLICIES[name]
    kwargs = dict(spec.args, **({"query": query} if spec.queries else {}))
    return CLASSES[name](**kwargs)


# --- the shared mechanism ------------------------------------------------------------------------------------------

class Compressor:
    """The run's compression settings (config.CompressionConfig, read by their own names) applied at hand-offs, in
    one order: token eviction (a token policy keeps kv_keep of each row's entries), then layer selection (KVComm: the
    earlier entries stay only in kv_layers of the layers; --kv_policy kvcomm alone uses kv_keep as that share), then
    quantization (kv_quant: every entry handed on is held as int8/int4 codes, those held as codes since an earlier
    hand-off keep theirs; entries written after the hand-off stay in the model's precision until the next one).
    kv_policy "none" with a kv_quant leaves only quantization."""

    def __init__(self, settings: CompressionConfig):
        c = self.settings = settings
        if c.kv_policy != "none" and c.kv_policy not in POLICIES:
            raise CompressionError(f"unknown policy {c.kv_policy!r}; choose from {', '.join(POLICIES)}")
        if not 0 < c.kv_keep <= 1 or not 0 < c.kv_layers <= 1:
            raise CompressionError(f"keep ratio {c.kv_keep if not 0 < c.kv_keep <= 1 else c.kv_layers} is outside "
                                   "(0, 1]")
        if c.kv_scope not in SCOPES or c.kv_positions not in POSITIONS:
            raise CompressionError(f"scope {c.kv_scope!r} / positions {c.kv_positions!r}: choose from "
                                   f"{', '.join(SCOPES)} / {', '.join(POSITIONS)}")
        if c.kv_quant != "none" and c.kv_quant not in BITS:
            raise CompressionError(f"unknown quantization {c.kv_quant!r}; choose from none, {', '.join(BITS)}")
        layer_policy = c.kv_policy != "none" and POLICIES[c.kv_policy].kind == "layers"
        self.policy = None if c.kv_policy == "none" or layer_policy else make_policy(c.kv_policy, c.kv_query)
        self.layer_share = c.kv_keep if layer_policy else c.kv_layers
        self.selector = KVComm(c.kvcomm_alpha, c.kvcomm_mu, c.kvcomm_sigma)

    @property
    def needs(self) -> tuple[str, ...]:
        """What scoring needs from the model (keys of registry.NEEDS), e.g. "attention" (a scoring pass)."""
        c = self.settings
        own = POLICIES[c.kv_policy].requirements(c.kv_query) if c.kv_policy != "none" else ()
        return tuple(dict.fromkeys(own + (("attention",) if self.layer_share < 1 else ())))

    def check(self, model) -> None:
        """Fail before the run if this model cannot give what the policy needs."""
        if self.settings.kv_positions == "rerotate":
            problem = architecture.rerotate_problem(model)
            if problem:
                raise CompressionError(f"--kv_positions rerotate cannot work with {type(model).__name__}: {problem}; "
                                       "use --kv_positions original")

    def applies(self, agent_index: int, n_agents: int) -> bool:
        if agent_index == 0:
            return False
        return self.settings.compress_at == "every" or agent_index == n_agents - 1

    def budgets(self, state: KVState) -> torch.Tensor:
        valid = state.mask.sum(dim=1)
        budget = (valid.double() * self.settings.kv_keep).floor().long().clamp_min(self.settings.kv_min_keep)
        return torch.minimum(budget, valid)

    def protected(self, state: KVState) -> torch.Tensor:
        """(L', B, H', T) entries that are always kept: the kv_min_keep most recent, and latents if asked."""
        valid = state.mask == 1
        from_end = valid.flip(1).cumsum(dim=1).flip(1)  # 1 for a row's newest real entry
        prot = (valid & (from_end <= self.settings.kv_min_keep))[None, :, None, :]
        if self.settings.kv_protect == "latents":
            prot = prot | ((state.kinds == LATENT) & valid[None, :, None, :])
        return prot

    @torch.no_grad()
    def scores(self, wrapper, state: KVState, next_prompt, generators: list[torch.Generator]) -> torch.Tensor:
        """The policy's scores reduced to the selection scope, (L', B, H', T); padding -inf."""
        scope = self.settings.kv_scope
        s = self.policy.score(HandOff(wrapper, state, next_prompt, scope, generators)).float()
        if scope == "shared":
            s = s.mean(dim=(0, 2), keepdim=True)
        elif scope == "layer":
            s = s.mean(dim=2, keepdim=True)
        return s.masked_fill(state.mask[None, :, None, :] == 0, -math.inf)

    @torch.no_grad()
    def __call__(self, wrapper, state: KVState, next_prompt,
                 generators: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Compress `state` in place; returns the token selection (for observers) or None when no entry went."""
        if state.length == 0:
            return None
        kept = self.evict(wrapper, state, next_prompt, generators) if self.policy is not None else None
        if self.layer_share < 1:
            self.select_layers(wrapper, state, next_prompt, generators)
        if self.settings.kv_quant != "none":
            state.quantize(BITS[self.settings.kv_quant], self.settings.kv_quant_group)
        return kept

    @torch.no_grad()
    def select_layers(self, wrapper, state: KVState, next_prompt, generators) -> torch.Tensor | None:
        """Layer selection: per row, the top layers by KVComm's score keep the earlier entries. Returns (L, B) kept."""
        n_layers = len(state.layer_tensors())
        n_keep = layer_count(self.layer_share, n_layers)
        if n_keep >= n_layers:
            return None
        s = self.selector.layer_scores(HandOff(wrapper, state, next_prompt, self.settings.kv_scope, generators))
        top = s.argsort(dim=0, descending=True, stable=True)[:n_keep]  # ties: the shallower layer
        keep = torch.zeros_like(s, dtype=torch.bool).scatter(0, top, True)
        state.drop_layers(keep)
        return keep

    @torch.no_grad()
    def evict(self, wrapper, state: KVState, next_prompt,
              generators: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Token eviction: each row keeps its budget of entries by the policy's scores."""
        prot = self.protected(state)
        budget = torch.maximum(self.budgets(state), prot[0, :, 0, :].sum(dim=1))
        if bool((budget == state.mask.sum(dim=1)).all()):
            return None  # keeping everything: leave the cache untouched, bit for bit
        s = self.scores(wrapper, state, next_prompt, generators).masked_fill(prot, math.inf)
        k = int(budget.max())
        # a stable sort breaks ties (max-pooled scores have plateaus) by cache order, which padding does not change
        top = s.argsort(dim=-1, descending=True, stable=True)[..., :k]
        slot = torch.arange(k, device=s.device)
        real = (slot[None, :] < budget[:, None])[None, :, None, :]
        # sort kept entries back into cache order; unused slots of short rows go first, as left padding
        order = torch.where(real, top, torch.full_like(top, -1)).sort(dim=-1).values
        keep = slot[None, :] >= (k - budget)[:, None]
        select(wrapper.model, state, order.clamp_min(0), keep.long(), self.settings.kv_positions)
        return order.clamp_min(0), keep  # for observers: the kept columns of the cache before, and the real slots


def compressor_from_args(settings: CompressionConfig) -> Compressor | None:
    """The run's compressor, or None without a policy and without quantization."""
    return None if settings.kv_policy == "none" and settings.kv_quant == "none" else Compressor(settings)
