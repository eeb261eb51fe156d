"""The shared KV state of a batch: the only module that touches transformers' cache internals.

A state is the cache plus what the cache alone does not know:
  * `mask`     (B, T) 1 where a cache column holds a real token of that row, 0 for padding;
  * `next_pos` (B,)   the logical position the row's next token takes.
Positions are logical, not physical: after left padding (and, later, pruning) the column index of an entry is not
its position, so every forward pass gets explicit `position_ids` and the full 2-D attention mask.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache


@dataclass
class KVState:
    cache: DynamicCache | None
    mask: torch.Tensor  # (B, T) long
    next_pos: torch.Tensor  # (B,) long

    @classmethod
    def empty(cls, batch_size: int, device: torch.device | str) -> KVState:
        return cls(
            cache=None,
            mask=torch.zeros(batch_size, 0, dtype=torch.long, device=device),
            next_pos=torch.zeros(batch_size, dtype=torch.long, device=device),
        )

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

    def nbytes(self) -> int:
        """Bytes held by every key and value tensor of the cache (what the device really stores)."""
        if self.cache is None:
            return 0
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in self.cache.layers
                   if getattr(layer, "keys", None) is not None and layer.keys.numel())

    def row_nbytes(self) -> list[int]:
        """Each row's share of `nbytes()`: its real entries times the bytes one cache column holds per row.

        With batch size 1 this equals `nbytes()` exactly; in a padded batch the padding columns are nobody's share.
        """
        if self.cache is None or self.length == 0:
            return [0] * self.batch_size
        per_entry = self.nbytes() // (self.batch_size * self.length)
        return [n * per_entry for n in self.valid_tokens()]

    def layer_tensors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(keys, values) per layer, each (B, H_kv, T, d); read-only views for analysis and tests."""
        if self.cache is None:
            return []
        return [(layer.keys, layer.values) for layer in self.cache.layers]


def _positions(state: KVState, new_mask: torch.Tensor) -> torch.Tensor:
    # Real tokens continue at the row's next logical position; padding gets position 0 (it is masked anyway).
    pos = state.next_pos[:, None] + new_mask.cumsum(dim=1) - 1
    return pos.masked_fill(new_mask == 0, 0)


@torch.no_grad()
def extend(model, state: KVState, *, input_ids: torch.Tensor | None = None,
           inputs_embeds: torch.Tensor | None = None, new_mask: torch.Tensor | None = None,
           want: str = "hidden") -> torch.Tensor:
    """Run the model over new tokens (ids or embeddings) on top of `state`, growing it in place.

    Returns the last column's final hidden state (B, D) for want="hidden" (no LM head is computed) or its
    next-token logits (B, V) for want="logits". With left padding the last column is real for every row.
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
    else:
        raise ValueError(f"want must be 'hidden' or 'logits', got {want!r}")
    state.mask = attention_mask
    state.next_pos = state.next_pos + new_mask.sum(dim=1)
    return out
