"""A second device on a CPU-only machine, for testing model-parallel placement (--device_map) without GPUs.

Inside `TwoDevices()`, a tensor moved to "meta" keeps its values on the CPU but reports `device == meta`, and every
operation checks, as CUDA does, that its tensor arguments share one device (0-dim tensors excepted, which CUDA
also accepts). Placing half of a model's layers there with accelerate's `dispatch_model` gives a model split over
two devices whose cache layers, scores and hidden states really live on different "devices": any operation that
mixes them raises, and the numbers stay exact, so results can be compared with a single-device run.

What it cannot show: real transfer costs, CUDA streams and synchronisation, or NCCL. A real meta tensor with data
never reaches an operation here (one would raise).
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

SECOND = torch.device("meta")


class OnSecond(torch.Tensor):
    """A CPU tensor that reports the second device."""

    @staticmethod
    def __new__(cls, inner: torch.Tensor):
        t = torch.Tensor._make_wrapper_subclass(cls, inner.shape, strides=inner.stride(), dtype=inner.dtype,
                                                device=SECOND, requires_grad=False,
                                                storage_offset=inner.storage_offset())
        t.inner = inner
        return t

    def __repr__(self):
        return f"OnSecond({self.inner!r})"

    def tolist(self):  # a device-to-host read, as .tolist() on a CUDA tensor
        return self.inner.tolist()

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"{func} on a second-device tensor outside TwoDevices()")


def _on_second(x) -> bool:
    return isinstance(x, torch.Tensor) and x.device.type == "meta"


def _unwrap(x):
    if isinstance(x, OnSecond):
        return x.inner
    if _on_second(x):  # torch.tensor(..., device=meta) is built outside the dispatcher: only empty ones are fine
        if x.numel():
            raise RuntimeError(f"a real meta tensor with data {tuple(x.shape)} reached an operation")
        return torch.empty(x.shape, dtype=x.dtype)
    return x


def _wrap(x):
    return OnSecond(x) if isinstance(x, torch.Tensor) and not isinstance(x, OnSecond) else x


def _target(device) -> str | None:
    return None if device is None else ("second" if torch.device(device).type == "meta" else "cpu")


class TwoDevices(TorchDispatchMode):
    """Runs every operation on the CPU while checking device agreement as if "meta" were a second GPU."""

    def __init__(self):
        super().__init__()
        self.second_ops = 0  # operations that ran on the second device

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        target = _target(kwargs.get("device"))
        if func is torch.ops.aten.to.device:
            target, args = _target(args[1]), (args[0], torch.device("cpu"), *args[2:])
        if target is not None:  # a copy to a device or a factory on one: no agreement needed
            if "device" in kwargs:
                kwargs["device"] = torch.device("cpu")
            out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
            if target == "second":
                self.second_ops += 1
                return tree_map(_wrap, out)
            return out
        leaves, _ = tree_flatten((args, kwargs))
        devices = {"second" if _on_second(x) else "cpu" for x in leaves
                   if isinstance(x, torch.Tensor) and (_on_second(x) or x.dim() > 0)}
        if func is torch.ops.aten.copy_.default:  # copy_ between devices is allowed; the result is the destination
            devices = {"second" if _on_second(args[0]) else "cpu"}
        if len(devices) > 1:
            shapes = [f"{'second' if _on_second(x) else 'cpu'}{tuple(x.shape)}" for x in leaves
                      if isinstance(x, torch.Tensor)]
            raise RuntimeError(f"Expected all tensors to be on the same device: {func} got {', '.join(shapes)}")
        out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
        if devices == {"second"}:
            self.second_ops += 1
            return args[0] if func is torch.ops.aten.copy_.default else tree_map(_wrap, out)
        return out


def split_device_map(model, first: int) -> dict[str, str]:
    """A device_map for a decoder model: embeddings, rotary embedding and the first `first` layers on the CPU, the
    other layers, the final norm and the LM head on the second device."""
    n = model.config.num_hidden_layers
    dm = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu"}
    dm.update({f"model.layers.{i}": "cpu" if i < first else "meta" for i in range(n)})
    dm.update({"model.norm": "meta", "lm_head": "meta"})
    return dm
