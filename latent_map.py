"""Latents across models (teams of different models, --cross_model latent-map).

Two models that share a tokenizer embed the same vocabulary: row t of what each input-embedding module returns is
that model's vector for token t. The map carries the sender's input-embedding space into the receiver's: the ridge
least-squares affine map over every shared token,

    W = argmin_W ||(E_s - mu_s) W - (E_r - mu_r)||^2 + lam ||W||^2,    map(v) = (v - mu_s) W + mu_r,

then rescaled to the receiver's embedding norm (as the receiver's own latents are, models.Realigner).

Least squares rather than orthogonal Procrustes: Procrustes assumes the two spaces are rotations of each other, of
one width and one scale. Teams mix widths (576 and 96 in the tests; 2560 and 4096 for Qwen3-4B and Qwen3-8B), where
an orthogonal map degenerates to a projection, and the embeddings' scales differ. Least squares takes any two
widths, fits the scale, and is by construction the best linear predictor of the receiver's embedding of a token
from the sender's, which is what a mapped latent (a sender's mix of token embeddings) should become. Between a model
and itself it is the identity (up to the ridge term); tests check that and that a rotated, rescaled copy of a model's
embeddings is recovered token for token. `nearest_token_agreement` measures a map: the share of tokens whose mapped
sender embedding is nearest (cosine) to the receiver's embedding of the same token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from errors import RunError

PROBE = "The team sells 17 apples each day: how many dollars is that? \\boxed{42} A) B) <|im_end|>"


class LatentMapError(RunError):
    """Two models' latents cannot be mapped; the message names the fix."""


def shared_vocabulary(tok_a, tok_b) -> int:
    """The vocabulary size two tokenizers share: they must map the same tokens to the same ids and split text the
    same way (else LatentMapError)."""
    if tok_a.get_vocab() != tok_b.get_vocab():
        raise LatentMapError("the two models' tokenizers differ (their vocabularies are not the same)")
    if tok_a(PROBE, add_special_tokens=False)["input_ids"] != tok_b(PROBE, add_special_tokens=False)["input_ids"]:
        raise LatentMapError("the two models' tokenizers split the same text differently")
    return len(tok_a)


@torch.no_grad()
def input_embeddings(model, n: int, device: torch.device, chunk: int = 16384) -> torch.Tensor:
    """(n, d) float32 on `device`: what the model's input-embedding module returns for tokens 0..n-1 (families that
    scale embeddings inside the module, as Gemma does, included)."""
    embed = model.get_input_embeddings()
    dev = embed.weight.device
    return torch.cat([embed(torch.arange(i, min(i + chunk, n), device=dev)).float().to(device)
                      for i in range(0, n, chunk)])


@dataclass
class LatentMap:
    """Sender input-embedding space -> receiver input-embedding space (see the module docstring)."""

    weight: torch.Tensor  # (d_sender, d_receiver) float32
    mu_sender: torch.Tensor  # (d_sender,)
    mu_receiver: torch.Tensor  # (d_receiver,)
    target_norm: float  # the receiver's mean embedding norm: every mapped vector is rescaled to it
    dtype: torch.dtype  # the receiver's
    vocab: int  # the shared tokens the map was fitted on (ids 0..vocab-1)

    @classmethod
    @torch.no_grad()
    def build(cls, sender, receiver, lam: float = 1e-4, fit_ids: torch.Tensor | None = None) -> LatentMap:
        """`sender`, `receiver`: models.ModelWrapper. Solved once, on the receiver's input-embedding device; `lam`
        is relative to the mean eigenvalue of the sender's Gram matrix, so it means the same at every scale.
        `fit_ids`: fit on these tokens only (to measure the map on the others); default every shared token."""
        n = shared_vocabulary(sender.tokenizer, receiver.tokenizer)
        n = min(n, sender.model.get_input_embeddings().weight.shape[0],
                receiver.model.get_input_embeddings().weight.shape[0])
        dev = receiver.device
        x = input_embeddings(sender.model, n, dev)
        y = input_embeddings(receiver.model, n, dev)
        norm = y.norm(dim=-1).mean().item()
        if fit_ids is not None:
            x, y = x[fit_ids.to(dev)], y[fit_ids.to(dev)]
        mu_x, mu_y = x.mean(0), y.mean(0)
        x, y = x - mu_x, y - mu_y
        gram = x.T @ x
        ridge = lam * gram.diagonal().mean()
        weight = torch.linalg.solve(gram + ridge * torch.eye(gram.shape[0], device=dev), x.T @ y)
        if receiver.realigner is not None:  # the norm the receiver's own latents take
            norm = receiver.realigner.target_norm
        return cls(weight, mu_x, mu_y, norm, receiver.model.dtype, n)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """(..., d_sender) latent vectors -> (..., d_receiver) input embeddings of the receiver."""
        a = (v.float().to(self.weight.device) - self.mu_sender) @ self.weight + self.mu_receiver
        a = a * (self.target_norm / a.norm(dim=-1, keepdim=True).clamp_min(1e-6))
        return a.to(self.dtype)

    @torch.no_grad()
    def nearest_token_agreement(self, sender_model, receiver_model, ids: torch.Tensor) -> float:
        """Share of `ids` whose mapped sender embedding has the receiver's embedding of the same token as its
        nearest receiver embedding (cosine, over the whole shared vocabulary)."""
        dev = self.weight.device
        e_r = torch.nn.functional.normalize(input_embeddings(receiver_model, self.vocab, dev), dim=-1)
        src = sender_model.get_input_embeddings()(ids.to(sender_model.get_input_embeddings().weight.device))
        mapped = torch.nn.functional.normalize(self(src).float(), dim=-1)
        return (mapped @ e_r.T).argmax(-1).eq(ids.to(dev)).float().mean().item()
