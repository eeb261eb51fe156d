"""Looking inside a latent_mas run: per hand-off similarity heatmaps with the kept/dropped mask (--show_heatmaps),
and per agent latent vectors and hidden states (--save_embeddings), written under the run directory.

methods.latent_mas calls two hooks of `MethodConfig.observer`, both outside the timed regions:

* `look(wrapper, state, next_prompt)` just before a hand-off's compression: the seed's per-layer similarity on the
  cache as it arrives (cosine of each layer's head-averaged keys with the next agent's mean prompt embedding);
* `record(items, agents, k, look, kept, trace)` after agent k: draws the hand-off into agent k from what `look` saw
  and `kept` (the compressor's selection; None: everything kept), and saves agent k's latents and hidden states
  (`trace`, filled by ModelWrapper.prefill_and_think).

Files, one per item and transition or agent (an existing file is never overwritten; a repeat, say after a resumed
crash, is written as `<name>.1.<ext>`, `<name>.2.<ext>`, ...):

    heatmaps/item00007_2-critic_to_refiner.png    heatmap, kept share per layer, entry kinds
    heatmaps/item00007_2-critic_to_refiner.npz    the arrays behind it (numpy, no pickle)
    embeddings/item00007_0-planner.safetensors    latents, hidden_first, hidden_last (float32)
"""
from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

EMBEDDINGS_FORMAT = "latentmas-kv embeddings v1"


@dataclass
class Look:
    """What a hand-off's cache looked like before compression (CPU tensors)."""

    similarity: torch.Tensor  # (L, B, T) cosine per layer and cache column
    mask: torch.Tensor  # (B, T) 1 for real entries
    kinds: torch.Tensor  # (B, T) entry kinds (layer 0, head 0)
    positions: torch.Tensor  # (L', B, H', T) logical positions of the entries
    n_heads: int


@torch.no_grad()
def layer_similarity(wrapper, state, next_prompt) -> torch.Tensor:
    """(L, B, T): per layer, cosine of the head-averaged cached keys with the next prompt's mean input embedding
    (pads excluded), brought to the key width as the seed did (its head_dim-wide chunks averaged)."""
    from compression import _fit_query

    keys = [k for k, _ in state.layer_tensors()]
    q = wrapper.embed_mean(next_prompt).float()
    q = F.normalize(_fit_query(q, keys[0].shape[-1]), dim=-1)
    # per layer on that layer's device (a model spread with --device_map keeps its layers on several), then CPU
    return torch.stack([torch.einsum("btd,bd->bt", F.normalize(k.float().mean(dim=1), dim=-1), q.to(k.device)).cpu()
                        for k in keys])


def kept_mask(kept, mask: torch.Tensor, n_layers: int, n_heads: int) -> torch.Tensor:
    """(L, B, H, T) bool: which columns of the cache before compression survived, per layer and KV head.
    `kept` is the compressor's (index (L', B, H', K), keep (B, K)); None means every real entry was kept."""
    b, t = mask.shape
    if kept is None:
        return mask.bool()[None, :, None, :].expand(n_layers, b, n_heads, t)
    index, keep = (x.cpu() for x in kept)
    hits = torch.zeros(index.shape[0], b, index.shape[2], t, dtype=torch.long)
    # padding slots point at column 0 with keep 0: adding (not overwriting) leaves a real hit there intact
    hits.scatter_add_(3, index, keep.long()[None, :, None, :].expand_as(index).contiguous())
    return (hits > 0).expand(n_layers, b, n_heads, t)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "agent"


def create_exclusive(folder: Path, stem: str, suffixes: tuple[str, ...]) -> list:
    """Open new files `stem<suffix>` for writing, never touching an existing one: if any exists, try `stem.1`,
    `stem.2`, ... All suffixes share the chosen name. Safe against other processes writing the same folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in itertools.count():
        name = stem if n == 0 else f"{stem}.{n}"
        handles = []
        try:
            for suffix in suffixes:
                handles.append(open(folder / f"{name}{suffix}", "xb"))
            return handles
        except FileExistsError:
            for h in handles:
                h.close()
                os.unlink(h.name)


class Observer:
    def __init__(self, run_dir: Path | str, heatmaps: bool = False, embeddings: bool = False, flow: str = "chain",
                 label: str = ""):
        self.run_dir, self.heatmaps, self.embeddings = Path(run_dir), heatmaps, embeddings
        self.flow, self.label = flow, label
        self.written: list[Path] = []

    def look(self, wrapper, state, next_prompt) -> Look | None:
        if not self.heatmaps or state.length == 0:
            return None
        sim = layer_similarity(wrapper, state, next_prompt)
        return Look(sim, state.mask.cpu(), state.kinds[0, :, 0, :].cpu(), state.pos.cpu(),
                    state.layer_tensors()[0][0].shape[1])

    def record(self, items, agents, k: int, look: Look | None, kept, trace: dict | None) -> None:
        if look is not None:
            source = "workers" if self.flow == "parallel" else agents[k - 1].name
            keep = kept_mask(kept, look.mask, look.similarity.shape[0], look.n_heads)
            for b, item in enumerate(items):
                stem = f"item{item.index:05d}_{k}-{_slug(source)}_to_{_slug(agents[k].name)}"
                self._heatmap(stem, item.index, source, agents[k].name, look, keep, b, compressed=kept is not None)
        if self.embeddings and trace and "latents" in trace:
            for b, item in enumerate(items):
                self._embeddings(item.index, k, agents[k], trace, b)

    # --- writers ---------------------------------------------------------------------------------------------
    def _heatmap(self, stem: str, index: int, source: str, target: str, look: Look, keep: torch.Tensor, b: int,
                 compressed: bool) -> None:
        cols = look.mask[b].nonzero().squeeze(1)
        sim = look.similarity[:, b, cols].numpy()  # (L, n)
        kept = keep[:, b][..., cols].numpy()  # (L, H, n)
        kinds = look.kinds[b, cols].numpy().astype(np.int8)
        png, npz = create_exclusive(self.run_dir / "heatmaps", stem, (".png", ".npz"))
        with npz:
            np.savez_compressed(npz, similarity=sim.astype(np.float32), kept=kept, kinds=kinds,
                                positions=look.positions[:, b][..., cols].numpy(), item_index=np.array(index),
                                source=np.array(source), target=np.array(target), compression=np.array(self.label))
        with png:
            fig = draw_heatmap(sim, kept, kinds, f"item {index}: cache handed from {source} to {target}"
                               + (f" ({self.label})" if compressed and self.label else ""))
            fig.savefig(png, format="png", dpi=100)
        self.written += [Path(png.name), Path(npz.name)]

    def _embeddings(self, index: int, k: int, agent, trace: dict, b: int) -> None:
        from safetensors.torch import save

        hidden = trace["hidden"]
        width = hidden[0].shape[-1]
        latents = torch.stack([v[b] for v in trace["latents"]]) if trace["latents"] else torch.zeros(0, width)
        tensors = {name: t.detach().float().cpu().contiguous() for name, t in
                   (("latents", latents), ("hidden_first", hidden[0][b]), ("hidden_last", hidden[-1][b]))}
        meta = {"format": EMBEDDINGS_FORMAT, "item_index": str(index), "agent_index": str(k), "agent": agent.name,
                "role": agent.role, "latent_steps": str(len(trace["latents"]))}
        (f,) = create_exclusive(self.run_dir / "embeddings", f"item{index:05d}_{k}-{_slug(agent.name)}",
                                (".safetensors",))
        with f:
            f.write(save(tensors, metadata=meta))
        self.written.append(Path(f.name))


def draw_heatmap(sim: np.ndarray, kept: np.ndarray, kinds: np.ndarray, title: str):
    """A figure: layers x cache entries cosine (the seed's heatmap), below it the share of KV heads that kept each
    entry (one row when every layer kept the same set), and a strip of entry kinds."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    n_layers, n = sim.shape
    share = kept.mean(axis=1)  # (L, n)
    same = bool((share == share[:1]).all())
    share = share[:1] if same else share
    fig = Figure(figsize=(min(4 + n / 40, 24), 3 + n_layers / 6 + (0.6 if same else n_layers / 6)))
    grid = fig.add_gridspec(3, 2, height_ratios=[n_layers, max(share.shape[0], 1.5), 1], width_ratios=[40, 1],
                            hspace=0.35, wspace=0.03, left=0.13, right=0.93, top=0.93, bottom=0.08)
    ax = fig.add_subplot(grid[0, 0])
    lim = float(np.abs(sim).max()) or 1.0
    im = ax.imshow(sim, aspect="auto", cmap="coolwarm", vmin=-lim, vmax=lim, interpolation="nearest")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    mid = n_layers // 2
    ax.set_yticks(sorted({0, mid, n_layers - 1}))
    ax.set_yticklabels([f"{i} (mid)" if i == mid else str(i) for i in sorted({0, mid, n_layers - 1})], fontsize=7)
    ax.tick_params(labelbottom=False)
    fig.colorbar(im, cax=fig.add_subplot(grid[0, 1])).set_label("cosine", fontsize=7)
    ax2 = fig.add_subplot(grid[1, 0], sharex=ax)
    ax2.imshow(share, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    ax2.set_yticks([0] if same else [0, share.shape[0] - 1])
    ax2.set_ylabel("kept" if same else "kept (layer)", fontsize=8)
    ax2.tick_params(labelbottom=False, labelsize=7)
    ax2.set_title(f"kept {int(kept[0, 0].sum()) if same else round(float(kept.mean() * n))} of {n} entries "
                  "(black: kept" + ("" if same else "; grey: kept by some KV heads") + ")", fontsize=8)
    ax3 = fig.add_subplot(grid[2, 0], sharex=ax)
    colours = ["white", "tab:blue", "tab:orange", "tab:green"]
    ax3.imshow(kinds[None, :], aspect="auto", cmap=ListedColormap(colours), vmin=-0.5, vmax=3.5,
               interpolation="nearest")
    ax3.set_yticks([])
    ax3.set_xlabel("cache entry (cache order; kinds: blue prompt, orange latent, green text)", fontsize=8)
    return fig


def observer_from_args(cfg, run_dir: Path) -> Observer | None:
    """The run's observer (cfg: config.RunConfig), or None when neither --show_heatmaps nor --save_embeddings is
    given. Heatmaps name the compression by RunConfig.observer_label."""
    out = cfg.output
    if not (out.show_heatmaps or out.save_embeddings):
        return None
    from registry import TOPOLOGIES

    flow = TOPOLOGIES[cfg.team.prompt][1] if cfg.team.prompt in TOPOLOGIES else "chain"
    return Observer(run_dir, out.show_heatmaps, out.save_embeddings, flow, cfg.observer_label())
