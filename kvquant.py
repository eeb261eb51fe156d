"""Integer codes for handed-off KV entries: KIVI-style asymmetric quantization (Liu et al. 2024, arXiv 2402.02750),
keys per channel and values per token, as the quantized hand-off of Q-KVComm (arXiv 2512.17914) stores them.

Keys have outlier channels, so each channel gets its own scale and zero point over a group of `group` entries of one
row; values are quantized per entry, over groups of `group` channels. Key groups are counted over a row's real
entries in cache order (padding and invisible columns belong to no group), so a row's codes and scales do not depend
on the rows it is batched with. Scales and zero points are stored in the cache's dtype; 4-bit codes two per byte.
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


def held_share(bits: int, group: int, head_dim: int, itemsize: int) -> float:
    """Bytes a quantized entry holds per byte of the same entry in the cache's dtype (full key groups): codes, plus a
    scale and a zero point per `group` entries for each key channel and per `group` channels for each value."""
    gv = group if head_dim % group == 0 else head_dim
    codes = bits / 8
    key = codes + 2 * itemsize / group
    value = codes + 2 * itemsize / gv
    return (key + value) / (2 * itemsize)
