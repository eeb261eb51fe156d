"""The shared KV state of a batch: the only module that touches transformers' cache internals.

A state is the cache plus what the cache alone does not know:
  * `mask`     (B, T) 1 where a cache column holds a real entry of that row, 0 for padding;
  * `next_pos` (B,)   the logical position the row's next token takes;
  * `pos`      (L', B, H', T) the logical position each cached key was rotated with (its RoPE phase);
  * `kinds`    (L', B, H', T) what each entry is (PAD, PROMPT, LATENT, TEXT).
L' and H' are 1 until a per-layer or per-head selection makes entries differ between layers or heads.
Positions are logical, not physical: after left padding or pruning the column of an entry is not its position, so
every forward pass gets explicit `position_ids` and the full 2-D attention mask.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import DynamicCache

PAD, PROMPT, LATENT, TEXT = 0, 1, 2, 3
POSITION_MODES = ("original", "rerotate", "shift")


@dataclass
class KVState:
    cache: DynamicCache | None
    mask: torch.Tensor
    next_pos: torch.Tensor
    pos: torch.Tensor
    kinds: torch.Tensor

    @classmethod
    def empty(cls, batch_size: int, device: torch.device | str) -> KVState:
        z = torch.zeros(1, batch_size, 1, 0, dtype=torch.long, device=device)
        return cls(cache=None, mask=torch.zeros(batch_size, 0, dtype=torch.long, device=device),
                   next_pos=torch.zeros(batch_size, dtype=torch.long, device=device), pos=z, kinds=z.clone())

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    @property
    def length(self) -> int:
        """Physical cache length (columns), padding included."""
        return self.mask.shape[1]

    def valid_tokens(self) -> list[int]:
        """Real (non-padding) entries per row."""
        return self.mask.sum(dim=1).tolist()

    def _layers(self):
        if self.cache is None:
            return []
        return [layer for layer in self.cache.layers if getattr(layer, "keys", None) is not None]

    def nbytes(self) -> int:
        """Bytes held by every key and value tensor of the cache (what the device really stores)."""
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in self._layers())

    def row_nbytes(self) -> list[int]:
        """Each row's share of `nbytes()`: its real entries times the bytes one cache column holds per row.

        With batch size 1 this equals `nbytes()` exactly; in a padded batch the padding columns are nobody's share.
        """
        if self.length == 0 or not self._layers():
            return [0] * self.batch_size
        per_entry = self.nbytes() // (self.batch_size * self.length)
        return [n * per_entry for n in self.valid_tokens()]

    def layer_tensors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(keys, values) per layer, each (B, H_kv, T, d): post-RoPE keys, for scoring and analysis."""
        return [(layer.keys, layer.values) for layer in self._layers()]

    def kind_counts(self, kind: int) -> list[int]:
        """Entries of one kind per row (counted on layer 0, head 0)."""
        return ((self.kinds[0, :, 0, :] == kind) & (self.mask == 1)).sum(dim=1).tolist()

    def clone(self) -> KVState:
        layers = self.layer_tensors()
        cache = DynamicCache([(k.clone(), v.clone()) for k, v in layers]) if layers else None
        return KVState(cache, self.mask.clone(), self.next_pos.clone(), self.pos.clone(), self.kinds.clone())

    def _truncate(self, length: int) -> None:
        for layer in self._layers():
            layer.keys = layer.keys[:, :, :length, :]
            layer.values = layer.values[:, :, :length, :]
        self.mask, self.pos, self.kinds = self.mask[:, :length], self.pos[..., :length], self.kinds[..., :length]


@contextmanager
def rollback(state: KVState):
    """Whatever runs inside (a scoring pass, a reference decode) leaves `state` as it found it."""
    length, next_pos = state.length, state.next_pos.clone()
    try:
        yield state
    finally:
        state._truncate(length)
        state.next_pos = next_pos


def _positions(state: KVState, new_mask: torch.Tensor) -> torch.Tensor:
    # Real tokens continue at the row's next logical position; padding gets position 0 (it is masked anyway).
    pos = state.next_pos[:, None] + new_mask.cumsum(dim=1) - 1
    return pos.masked_fill(new_mask == 0, 0)


@torch.no_grad()
def extend(model, state: KVState, *, input_ids: torch.Tensor | None = None,
           inputs_embeds: torch.Tensor | None = None, new_mask: torch.Tensor | None = None,
           want: str = "hidden", kind: int = PROMPT) -> torch.Tensor:
    """Run the model over new tokens (ids or embeddings) on top of `state`, growing it in place.

    want="hidden": the last column's final hidden state (B, D), no LM head computed; "logits": the last column's
    next-token logits (B, V); "all_logits": logits of every new column (B, N, V). With left padding the last column
    is real for every row.
    """
    x = input_ids if input_ids is not None else inputs_embeds
    bsz, new_len = x.shape[0], x.shape[1]
    if new_mask is None:
        new_mask = torch.ones(bsz, new_len, dtype=torch.long, device=state.mask.device)
    if state.cache is None:
        state.cache = DynamicCache(config=model.config)
    position_ids = _positions(state, new_mask)
    attention_mask = torch.cat([state.mask, new_mask], dim=1)
    kwargs = dict(attention_mask=attention_mask, position_ids=position_ids, cache=state.cache, use_cache=True)
    if input_ids is not None:
        kwargs["input_ids"] = input_ids
    else:
        kwargs["inputs_embeds"] = inputs_embeds
    if want == "hidden":
        out = model.base_model(**kwargs).last_hidden_state[:, -1, :]
    elif want == "logits":
        out = model(**kwargs, logits_to_keep=1).logits[:, -1, :]
    elif want == "all_logits":
        out = model(**kwargs).logits
    else:
        raise ValueError(f"want must be 'hidden', 'logits' or 'all_logits', got {want!r}")
    lp, _, hp, _ = state.pos.shape
    state.mask = attention_mask
    state.pos = torch.cat([state.pos, position_ids[None, :, None, :].expand(lp, bsz, hp, new_len)], dim=-1)
    new_kinds = (new_mask * kind)[None, :, None, :].expand(lp, bsz, hp, new_len)
    state.kinds = torch.cat([state.kinds, new_kinds], dim=-1)
    state.next_pos = state.next_pos + new_mask.sum(dim=1)
    # with --device_map the last layer may sit elsewhere: results come back to where the batch's masks live
    return out.to(state.mask.device)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rerotate(model, keys: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Turn post-RoPE keys (B, H, K, d) by `delta` positions (B or 1, H or 1, K): RoPE angles add up."""
    rotary = getattr(model.base_model, "rotary_emb", None)
    if rotary is None or getattr(rotary, "attention_scaling", 1.0) != 1.0:
        raise ValueError("--kv_positions rerotate needs plain RoPE (a rotary_emb with no attention scaling); "
                         "use --kv_positions original")
    b, h, k, d = keys.shape
    delta = delta.to(keys.device).expand(b, h, k).reshape(b * h, k)
    cos, sin = rotary(keys.float(), delta)  # (B*H, K, d); the rotary module may sit on another device
    cos, sin = cos.view(b, h, k, d).float().to(keys.device), sin.view(b, h, k, d).float().to(keys.device)
    return (keys.float() * cos + _rotate_half(keys.float()) * sin).to(keys.dtype)


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x[b, h, idx[b, h, :], :], as one index_select over the (B*H*T, d) rows: it copies whole head_dim rows at once,
    measured 5-8x faster than torch.gather on CPU (1x3x4096x64 fp32 keeping 60 %, one thread)."""
    b, h, t, d = x.shape
    rows = (torch.arange(b * h, device=x.device).view(b, h, 1) * t + idx).reshape(-1)
    return x.reshape(b * h * t, d).index_select(0, rows).view(b, h, idx.shape[-1], d)


@torch.no_grad()
def select(model, state: KVState, index: torch.Tensor, keep: torch.Tensor, positions: str = "original") -> None:
    """Keep, per layer / row / KV head, the cache columns `index` (L', B, H', K), in place.

    `keep` (B, K) marks which of the K slots are real for each row (rows keeping fewer entries are left-padded).
    `positions`: "original" leaves kept keys and the next position alone (a gap where entries were dropped);
    "rerotate" turns kept keys to contiguous positions and continues after them; "shift" (the seed's behaviour)
    continues after the kept count but leaves the keys' phases stale.
    """
    if positions not in POSITION_MODES:
        raise ValueError(f"positions must be one of {POSITION_MODES}")
    layers = state._layers()
    lp, bsz, hp, k = index.shape
    n_heads = layers[0].keys.shape[1]
    new_pos = (keep.cumsum(dim=1) - 1).clamp_min(0)  # contiguous logical positions of the kept entries
    old_pos = torch.gather(state.pos.expand(lp, bsz, hp, -1), 3, index)
    for li, layer in enumerate(layers):
        # every layer's tensors stay on that layer's device (--device_map): the index goes to them
        idx = index[li if lp > 1 else 0].to(layer.keys.device).expand(bsz, n_heads, k)
        keys, values = _take(layer.keys, idx), _take(layer.values, idx)
        if positions == "rerotate":
            delta = new_pos[:, None, :] - old_pos[li if lp > 1 else 0]
            keys = _rerotate(model, keys, delta)
        layer.keys, layer.values = keys, values
    state.kinds = torch.gather(state.kinds.expand(lp, bsz, hp, -1), 3, index) * keep[None, :, None, :]
    state.mask = keep.long()
    if positions == "original":
        state.pos = old_pos
    else:
        state.pos = new_pos[None, :, None, :].expand(lp, bsz, hp, k).clone()
        state.next_pos = keep.sum(dim=1)


def concat(states: list[KVState]) -> KVState:
    """Lay independent caches of the same batch side by side (a judger reading parallel workers).

    Every block keeps the positions it was computed at, so each is a coherent segment and blocks overlap in
    logical position (as parallel context windows do); the next token continues after the longest block.
    """
    states = [s for s in states if s.length]
    if not states:
        raise ValueError("nothing to concatenate")
    layers = [s.layer_tensors() for s in states]
    cache = DynamicCache([(torch.cat([ly[i][0] for ly in layers], dim=2), torch.cat([ly[i][1] for ly in layers], dim=2))
                          for i in range(len(layers[0]))])
    lp = max(s.pos.shape[0] for s in states)
    hp = max(s.pos.shape[2] for s in states)

    def side_by_side(tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.expand(lp, t.shape[1], hp, t.shape[3]) for t in tensors], dim=-1)

    return KVState(cache, torch.cat([s.mask for s in states], dim=1),
                   torch.stack([s.next_pos for s in states]).max(dim=0).values,
                   side_by_side([s.pos for s in states]), side_by_side([s.kinds for s in states]))
