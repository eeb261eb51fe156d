"""How well the latent map (latent_map.py) carries one model's input-embedding space into another's.

For a pair of models sharing a tokenizer: the map is fitted on a random share of the vocabulary and measured on the
held-out tokens, as nearest-token agreement (the receiver's nearest embedding, by cosine, to a token's mapped
sender embedding is that token's own) and as R^2 of the mapped embeddings against the receiver's. The sender mapped
onto itself is the control (the identity: agreement 1 up to duplicate embeddings); chance is 1 / vocabulary.

    python bench/latent_map_fit.py --sender smollm2-135m --receiver PATH_OR_HUB_ID [--held_out 0.1]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latent_map import LatentMap, input_embeddings  # noqa: E402
from models import ModelWrapper, load_model  # noqa: E402


def measure(sender: ModelWrapper, receiver: ModelWrapper, held_out: float = 0.1, seed: int = 0) -> dict:
    """Fit on (1 - held_out) of the shared tokens, measure on the rest (tokens with an all-zero embedding, such as a
    padding row, are left out: they have no direction)."""
    n = min(len(sender.tokenizer), sender.model.get_input_embeddings().weight.shape[0],
            receiver.model.get_input_embeddings().weight.shape[0])
    dev = receiver.device
    e_s, e_r = input_embeddings(sender.model, n, dev), input_embeddings(receiver.model, n, dev)
    usable = torch.nonzero((e_s.norm(dim=-1) > 0) & (e_r.norm(dim=-1) > 0)).squeeze(1)
    order = usable[torch.randperm(len(usable), generator=torch.Generator().manual_seed(seed)).to(usable.device)]
    test, fit = order[: int(len(order) * held_out)], order[int(len(order) * held_out):]
    t0 = time.perf_counter()
    m = LatentMap.build(sender, receiver, fit_ids=fit)
    build_s = time.perf_counter() - t0
    pred = (e_s[test] - m.mu_sender) @ m.weight + m.mu_receiver
    r2 = 1 - ((pred - e_r[test]) ** 2).sum() / ((e_r[test] - e_r[test].mean(0)) ** 2).sum()
    return {"shape": list(m.weight.shape), "vocab": n, "fit_tokens": len(fit), "test_tokens": len(test),
            "build_s": round(build_s, 3), "r2_held_out": round(r2.item(), 4),
            "agreement_held_out": round(m.nearest_token_agreement(sender.model, receiver.model, test), 4),
            "chance": round(1 / n, 6)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sender", required=True)
    p.add_argument("--receiver", required=True)
    p.add_argument("--held_out", type=float, default=0.1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    s = ModelWrapper(*load_model(args.sender, args.device, "float32"))
    r = ModelWrapper(*load_model(args.receiver, args.device, "float32"))
    out = {"sender->sender": measure(s, s, args.held_out), "sender->receiver": measure(s, r, args.held_out)}
    print(json.dumps({"sender": args.sender, "receiver": args.receiver, **out}, indent=1))


if __name__ == "__main__":
    main()
