"""Integer codes for handed-off KV entries: KIVI-style asymmetric quantization (Liu et al. 2024, arXiv 2402.02750),
keys per channel and values per token, as the quantized hand-off of Q-KVComm (arXiv 2512.17914) stores them.

Keys have outlier channels, so each channel gets its own scale and zero point over a group of `group` entries of one
row; values are quantized per entry, over groups of `group` channels. Key groups are counted over a row's real
entries in cache order (padding and invisible columns belong to no group), so a row's codes and scales do not depend
on the rows it is batched with. Scales and zero points are stored in the cache's dtype; 4-bit codes two per byte.

Entries already held as codes keep them at later hand-offs (`requantize`): only entries written since are quantized,
in key groups of their own, so an entry's dequantized value never changes once it is handed on. A key group keeps
the scale and zero point it was formed with when some of its entries are evicted later (the survivors keep their
codes); a group with no entry left is freed. Values are per entry: evicting one drops its codes and scales.
Pure tensor functions: kv_state.KVLayer holds the result and dequantizes it for attention.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

BITS = {"int8": 8, "int4": 4}  # --kv_quant values besides "none"


@dataclass
class Quantized:
    """Keys and values (B, H, T, d) of T cache columns as codes plus per-group scales and zero points."""

    bits: int
    k_codes: torch.Tensor  # uint8 (B, H, T, d), or (B, H, T, d/2) with two 4-bit codes per byte
    k_scale: torch.Tensor  # (B, H, G, d): one per channel and group of real entries
    k_zero: torch.Tensor
    k_group: torch.Tensor  # (B, 1 or H, T) long: each column's key group (derived from the state's mask; not KV data)
    v_codes: torch.Tensor
    v_scale: torch.Tensor  # (B, H, T, d / gv): one per entry and group of gv channels
    v_zero: torch.Tensor

    @property
    def length(self) -> int:
        return self.k_codes.shape[2]

    @property
    def nbytes(self) -> int:
        """Bytes of the codes, scales and zero points: what holding these entries costs."""
        return sum(t.nbytes for t in (self.k_codes, self.k_scale, self.k_zero, self.v_codes, self.v_scale,
                                      self.v_zero))

    def dequantize(self) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = self.k_scale.dtype
        kc = _unpack(self.k_codes, self.bits).to(dtype)
        b, h, t, d = kc.shape
        grp = self.k_group.expand(b, h, t)[..., None].expand(b, h, t, d)
        keys = kc * self.k_scale.gather(2, grp) + self.k_zero.gather(2, grp)
        vc = _unpack(self.v_codes, self.bits).to(dtype)
        n = self.v_scale.shape[-1]
        values = (vc.view(b, h, t, n, d // n) * self.v_scale[..., None] + self.v_zero[..., None]).view(b, h, t, d)
        return keys, values


def _pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 8:
        return codes
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def _unpack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 8:
        return codes
    return torch.stack([codes & 15, codes >> 4], dim=-1).flatten(-2)


def _range(lo: torch.Tensor, hi: torch.Tensor, levels: int, dtype: torch.dtype):
    """Scale and zero point in the cache's dtype (what is stored), never a zero scale."""
    scale = ((hi - lo) / levels).to(dtype)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, lo.to(dtype)


def _codes(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, levels: int) -> torch.Tensor:
    return ((x - zero.float()) / scale.float()).round().clamp(0, levels).to(torch.uint8)


@torch.no_grad()
def quantize(keys: torch.Tensor, values: torch.Tensor, real: torch.Tensor, bits: int, group: int) -> Quantized:
    """Quantize (B, H, T, d) keys and values; `real` (B, 1 or H, T) marks the entries that form key groups (the
    others get codes that nobody reads)."""
    levels = 2 ** bits - 1
    dtype = keys.dtype
    b, h, t, d = keys.shape
    real = real.bool()
    rank = real.long().cumsum(dim=-1) - 1
    n_groups = max(int(real.sum(dim=-1).max()) + group - 1, group) // group
    grp = torch.where(real, rank // group, torch.full_like(rank, n_groups))  # the extra group collects the rest
    x = keys.float()
    idx = grp.expand(b, h, t)[..., None].expand(b, h, t, d)
    lo = x.new_full((b, h, n_groups + 1, d), torch.inf).scatter_reduce(2, idx, x, "amin")[:, :, :n_groups]
    hi = x.new_full((b, h, n_groups + 1, d), -torch.inf).scatter_reduce(2, idx, x, "amax")[:, :, :n_groups]
    empty = ~torch.isfinite(lo)  # groups a shorter row does not fill
    lo, hi = lo.masked_fill(empty, 0), hi.masked_fill(empty, 0)
    k_scale, k_zero = _range(lo, hi, levels, dtype)
    k_group = grp.clamp_max(n_groups - 1)
    kidx = k_group.expand(b, h, t)[..., None].expand(b, h, t, d)
    k_codes = _codes(x, k_scale.gather(2, kidx), k_zero.gather(2, kidx), levels)
    k_codes = k_codes.masked_fill(~real.expand(b, h, t)[..., None], 0)

    gv = group if d % group == 0 else d  # channel groups of values: `group` wide when it divides head_dim
    v = values.float().view(b, h, t, d // gv, gv)
    v_scale, v_zero = _range(v.amin(dim=-1), v.amax(dim=-1), levels, dtype)
    v_codes = _codes(v, v_scale[..., None], v_zero[..., None], levels).view(b, h, t, d)
    return Quantized(bits, _pack(k_codes, bits), k_scale, k_zero, k_group, _pack(v_codes, bits), v_scale, v_zero)


def _along(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x[b, h, idx[b, h, t], ...] for x (B, 1 or H, T_old, ...) and idx (B, H, T)."""
    b, h, t = idx.shape
    x = x.expand(b, h, *x.shape[2:])
    if x.dim() == 3:
        return x.gather(2, idx)
    return x.gather(2, idx[..., None].expand(b, h, t, x.shape[-1]))


def _compact(scale: torch.Tensor, zero: torch.Tensor, k_group: torch.Tensor, real: torch.Tensor):
    """Free the key groups no real entry refers to any more (evicted, or hidden by layer selection), renumbering the
    rest in their order, per row and head; a row with fewer groups than another pads with unused ones."""
    b, h, g, d = scale.shape
    grp = torch.where(real, k_group, torch.full_like(k_group, g))  # g: a spare slot for the entries nobody reads
    used = torch.zeros(b, h, g + 1, dtype=torch.bool, device=scale.device).scatter_(2, grp, True)[..., :g]
    n = max(int(used.sum(dim=-1).max()), 1)
    order = (~used).to(torch.uint8).argsort(dim=-1, stable=True)[..., :n]  # the used groups first, in order
    renumber = (used.long().cumsum(dim=-1) - 1).clamp(0, n - 1)
    idx = order[..., None].expand(b, h, n, d)
    return scale.gather(2, idx), zero.gather(2, idx), renumber.gather(2, k_group)


@torch.no_grad()
def requantize(old: Quantized | None, k_src: torch.Tensor, v_src: torch.Tensor, keys: torch.Tensor,
               values: torch.Tensor, real: torch.Tensor, bits: int, group: int) -> Quantized:
    """Hold (B, H, T, d) keys and values as codes, keeping the codes of entries `old` already holds: `k_src` and
    `v_src` (B, H, T) give each column's column in `old`, -1 for an entry in the model's precision (written since the
    last hand-off, or a key that re-rotation moved), which is quantized now; its key groups count only such entries
    of the row (`real` (B, 1 or H, T) marks the entries some head of the row sees)."""
    if old is None or old.bits != bits:  # nothing held as codes (of this width): quantize everything
        return quantize(keys, values, real, bits, group)
    b, h, t, _ = keys.shape
    real = real.bool().expand(b, h, t)
    fresh_k, fresh_v = k_src < 0, v_src < 0
    new = quantize(keys, values, real & fresh_k, bits, group)
    ks, vs = k_src.clamp_min(0), v_src.clamp_min(0)
    fk, fv = fresh_k[..., None], fresh_v[..., None]
    k_codes = torch.where(fk, new.k_codes, _along(old.k_codes, ks))
    k_group = torch.where(fresh_k, new.k_group.expand(b, h, t) + old.k_scale.shape[2], _along(old.k_group, ks))
    k_scale, k_zero, k_group = _compact(torch.cat([old.k_scale, new.k_scale], dim=2),
                                        torch.cat([old.k_zero, new.k_zero], dim=2), k_group, real)
    return Quantized(bits, k_codes, k_scale, k_zero, k_group, torch.where(fv, new.v_codes, _along(old.v_codes, vs)),
                     torch.where(fv, new.v_scale, _along(old.v_scale, vs)),
                     torch.where(fv, new.v_zero, _along(old.v_zero, vs)))


def held_share(bits: int, group: int, head_dim: int, itemsize: int) -> float:
    """Bytes a quantized entry holds per byte of the same entry in the cache's dtype (full key groups): codes, plus a
    scale and a zero point per `group` entries for each key channel and per `group` channels for each value."""
    gv = group if head_dim % group == 0 else head_dim
    codes = bits / 8
    key = codes + 2 * itemsize / group
    value = codes + 2 * itemsize / gv
    return (key + value) / (2 * itemsize)
