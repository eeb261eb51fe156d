"""What the harness needs to know about a decoder family, found once per model and kept in one place.

The rest of the code asks this module, never the model's attributes:
  * `describe(model)`: attention kind and window of every layer (full, sliding-window, chunked), head counts;
  * `rope_layers(model)` / `rotate(...)`: which layers rotate their keys and how to turn cached keys by a position
    offset with that layer's own rotary parameters (found by probing the model, then checked against it);
  * `embedding_norm(model)`: the mean norm of what the embedding module returns for real tokens (scaled
    embeddings included), the norm latent vectors are given;
  * `attention(model, masks=..., capture=...)`: a context in which every attention layer gets its own prepared mask
    and/or reports its post-RoPE queries and keys, through an attention function registered with transformers
    that wraps the model's own (sdpa or eager).
"""
from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.cache_utils import get_layer_types_and_kwargs
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from errors import RunError

ATTENTION_KINDS = ("full_attention", "sliding_attention", "chunked_attention")
MASKED_IMPLEMENTATIONS = ("sdpa", "eager")  # kernels that take the prepared 4-D masks the KV state builds
_WRAPPER = "latentmas_wrapped"


class ArchitectureError(RunError):
    """The model (or a setting for it) cannot work with the shared KV state; the message names the reason."""


@dataclass
class Arch:
    name: str
    layer_types: list[str]  # one per decoder layer, from ATTENTION_KINDS
    windows: list[int | None]  # sliding window (sliding layers) or chunk size (chunked layers)
    n_heads: int
    n_kv_heads: int
    head_dim: int
    _rope: list[bool] | None = field(default=None, repr=False)
    _embed_norm: float | None = field(default=None, repr=False)

    @property
    def kinds(self) -> list[str]:
        """The distinct attention kinds, in a fixed order."""
        return [k for k in ATTENTION_KINDS if k in self.layer_types]

    def window(self, kind: str) -> int | None:
        return next((w for t, w in zip(self.layer_types, self.windows) if t == kind), None)


def _text_config(model):
    return model.config.get_text_config(decoder=True)


def decoder(model):
    """The decoder stack under the LM head (embeddings, layers, rotary module, final norm)."""
    inner = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    return getattr(model, "model", model) if inner is model else inner


def describe(model) -> Arch:
    """The model's attention layout (cached on the model). Raises ArchitectureError for what the state can't hold."""
    arch = getattr(model, "_latentmas_arch", None)
    if arch is not None:
        return arch
    cfg = _text_config(model)
    name = type(model).__name__
    types, kwargs = get_layer_types_and_kwargs(cfg)
    other = sorted(set(types) - set(ATTENTION_KINDS))
    if other:
        raise ArchitectureError(f"{name} has {', '.join(other)} layers; the shared KV state holds attention layers "
                                "only (full, sliding-window, chunked)")
    windows = [kw.get("sliding_window") for kw in kwargs]
    for kind in ATTENTION_KINDS[1:]:
        if len({w for t, w in zip(types, windows) if t == kind}) > 1:
            raise ArchitectureError(f"{name} has {kind} layers with different windows; not supported")
    impl = model.config._attn_implementation
    if impl not in MASKED_IMPLEMENTATIONS:
        raise ArchitectureError(f"attention implementation {impl!r} does not take the prepared masks the KV state "
                                f"builds; use --attn_implementation {' or '.join(MASKED_IMPLEMENTATIONS)}")
    n_heads = cfg.num_attention_heads
    arch = Arch(name, list(types), windows, n_heads, getattr(cfg, "num_key_value_heads", None) or n_heads,
                getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads)
    model._latentmas_arch = arch
    return arch


def model_summary(model) -> dict:
    """What config.json records of the model's layout."""
    arch = describe(model)
    return {"class": arch.name, "layer_types": arch.layer_types, "windows": arch.windows, "heads": arch.n_heads,
            "kv_heads": arch.n_kv_heads, "head_dim": arch.head_dim, "rope_layers": rope_layers(model)}


# --- attention hooks -----------------------------------------------------------------------------------------------

@dataclass
class _Context:
    base: str
    masks: list | None
    capture: Callable | None


_ACTIVE: list[_Context] = []


def base_attention(module, implementation: str) -> Callable:
    """The attention function a layer would call: a registered kernel, or its family's own eager function."""
    if implementation != "eager" and implementation in ALL_ATTENTION_FUNCTIONS:
        return ALL_ATTENTION_FUNCTIONS[implementation]
    return sys.modules[type(module).__module__].eager_attention_forward


def _wrapped(module, query, key, value, attention_mask, *args, **kwargs):
    ctx = _ACTIVE[-1]
    if ctx.masks is not None:
        attention_mask = ctx.masks[module.layer_idx]
    if ctx.capture is not None:
        ctx.capture(module, query, key, value, attention_mask, args, kwargs)
    return base_attention(module, ctx.base)(module, query, key, value, attention_mask, *args, **kwargs)


AttentionInterface.register(_WRAPPER, _wrapped)


@contextmanager
def attention(model, masks: list | None = None, capture: Callable | None = None):
    """Inside, layer i attends under `masks[i]` (when given), and `capture(module, q, k, v, mask, args, kwargs)`
    sees every layer's post-RoPE queries and full keys (when given)."""
    outer = _ACTIVE[-1] if _ACTIVE else None  # nested contexts add to what the outer one does
    base = model.config._attn_implementation
    _ACTIVE.append(_Context(outer.base if outer else base, masks if masks is not None else outer and outer.masks,
                            capture or (outer and outer.capture)))
    model.config._attn_implementation = _WRAPPER
    try:
        yield
    finally:
        model.config._attn_implementation = base
        _ACTIVE.pop()


# --- rotary positions ----------------------------------------------------------------------------------------------

def _rotary(model):
    rotary = getattr(decoder(model), "rotary_emb", None)
    if rotary is None:
        raise ArchitectureError(f"{type(model).__name__} has no rotary embedding module")
    return rotary


def _cos_sin(model, layer: int, positions: torch.Tensor):
    """cos, sin (N, K, rot) of `layer` at integer `positions` (N, K), without any attention scaling."""
    rotary = _rotary(model)
    device = next(rotary.buffers()).device
    x = torch.ones(1, device=device, dtype=torch.float32)
    pos = positions.to(device)
    kind = (describe(model).layer_types[layer],) if "layer_type" in inspect.signature(rotary.forward).parameters else ()
    cos, sin = rotary(x, pos, *kind)
    cos0, _ = rotary(x, torch.zeros_like(pos[:1, :1]), *kind)  # the attention scaling, divided out below
    return cos.float() / cos0.float(), sin.float() / cos0.float()


def rotate(model, layer: int, keys: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Turn post-RoPE keys (B, H, K, d) of `layer` by `delta` positions (B, H, K) with the family's own rotary
    function and that layer's parameters (RoPE angles add up). Layers without RoPE are returned unchanged."""
    if not rope_layers(model)[layer]:
        return keys
    b, h, k, d = keys.shape
    cos, sin = _cos_sin(model, layer, delta.expand(b, h, k).reshape(b * h, k))
    apply = sys.modules[type(decoder(model)).__module__].apply_rotary_pos_emb
    flat = keys.float().reshape(b * h, 1, k, d)
    cos, sin = cos.to(keys.device), sin.to(keys.device)
    try:
        _, out = apply(flat, flat, cos, sin)
    except RuntimeError:  # partial rotary applied by the attention module (phi, stablelm): only the first dims turn
        rot = cos.shape[-1]
        _, turned = apply(flat[..., :rot], flat[..., :rot], cos, sin)
        out = torch.cat([turned, flat[..., rot:]], dim=-1)
    return out.view(b, h, k, d).to(keys.dtype)


@torch.no_grad()
def _probe_keys(model, position: int) -> list[torch.Tensor]:
    """Every layer's key of one token alone at `position`: the token attends only to itself, so hidden states do
    not depend on the position and keys differ only by what RoPE did to them."""
    keys: dict[int, torch.Tensor] = {}

    def grab(module, q, k, v, mask, args, kwargs):
        keys[module.layer_idx] = k.float()

    dev = model.get_input_embeddings().weight.device
    ids = torch.tensor([[min(17, model.config.get_text_config(decoder=True).vocab_size - 1)]], device=dev)
    with attention(model, capture=grab):
        decoder(model)(input_ids=ids, position_ids=torch.tensor([[position]], device=dev), use_cache=False)
    return [keys[i] for i in sorted(keys)]


def rope_layers(model) -> list[bool]:
    """Per layer, whether its keys carry RoPE phases (False for NoPE layers), found by probing the model."""
    arch = describe(model)
    if arch._rope is None:
        arch._rope = [not torch.equal(a, b) for a, b in zip(_probe_keys(model, 0), _probe_keys(model, 7))]
    return arch._rope


def rerotate_problem(model) -> str | None:
    """Why cached keys of this model cannot be re-rotated, or None when `rotate` reproduces the model's own keys."""
    if not any(rope_layers(model)):
        return None  # nothing is rotated: re-rotation is the identity
    try:
        rotary = _rotary(model)
    except ArchitectureError as e:
        return str(e)
    kinds = getattr(rotary, "rope_type", "default")
    kinds = set(kinds.values()) if isinstance(kinds, dict) else {kinds}
    dynamic = kinds & {"dynamic", "longrope"}
    if dynamic:
        return f"its RoPE ({', '.join(sorted(dynamic))}) changes frequencies with the sequence length"
    k0, k7 = _probe_keys(model, 0), _probe_keys(model, 7)
    tol = 1e-4 if k0[0].dtype == torch.float32 else 2e-2
    for i, (a, b) in enumerate(zip(k0, k7)):
        try:
            turned = rotate(model, i, a, torch.full(a.shape[:3], 7, dtype=torch.long))
        except Exception as e:  # a family whose rotary functions do not follow the common signature
            return f"its rotary functions cannot be called per layer ({type(e).__name__}: {e})"
        if not torch.allclose(turned, b, atol=tol, rtol=tol):
            return f"turning layer {i}'s keys by 7 positions does not reproduce the model's own keys"
    return None


# --- embeddings ----------------------------------------------------------------------------------------------------

@torch.no_grad()
def embedding_norm(model) -> float:
    """Mean L2 norm of what the embedding module returns for every token id (scaled embeddings included)."""
    arch = describe(model)
    if arch._embed_norm is None:
        emb = model.get_input_embeddings()
        n, dev, total = emb.weight.shape[0], emb.weight.device, 0.0
        for start in range(0, n, 8192):
            ids = torch.arange(start, min(start + 8192, n), device=dev)
            total += emb(ids[None])[0].float().norm(dim=-1).sum().item()
        arch._embed_norm = total / n
    return arch._embed_norm
