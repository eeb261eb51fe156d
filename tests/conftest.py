"""Shared fixtures: a tiny random Qwen3 with a freshly trained tokenizer (offline, about a second), and the real
embedded SmolLM2 (converted once per machine into the cache folder)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
WORDS = ("plan critic refine judge answer question number apples oranges box total each day eggs sells market "
         "dollars step reason latent cache agent team solve first then the a of and is are how many what if").split()


def _train_tokenizer(folder: Path, vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    g = torch.Generator().manual_seed(0)
    sentences = []
    for _ in range(3000):
        n = int(torch.randint(3, 12, (1,), generator=g))
        idx = torch.randint(0, len(WORDS), (n,), generator=g).tolist()
        num = int(torch.randint(0, 1000, (1,), generator=g))
        sentences.append(" ".join(WORDS[i] for i in idx) + f" {num}. \\boxed{{{num}}} A) B) C) D)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(sentences, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", padding_side="left")
    fast.chat_template = CHATML
    fast.save_pretrained(folder)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved folder holding a 4-layer random Qwen3 (untied embeddings) and its tokenizer."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    folder = tmp_path_factory.mktemp("tiny-qwen3")
    _train_tokenizer(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    config = Qwen3Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                         tie_word_embeddings=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    """(model, tokenizer, device) of the tiny Qwen3, fp32 on CPU."""
    from models import load_model

    return load_model(str(tiny_model_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def smol():
    """The real embedded SmolLM2-135M (fp32, CPU)."""
    from models import load_model
    from registry import DEFAULT_MODEL

    return load_model(DEFAULT_MODEL, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def one_thread():
    """The tiny model's operations are far too small for several threads; on a busy machine they only contend."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def settings(argv: list[str]):
    """The checked settings of a run command line, as run.py makes them (an errors.RunError for bad input)."""
    import config
    import runner

    return runner.prepare(config.parse_command_line(argv)).cfg


def compressor(policy: str, **settings):
    """compression.Compressor for --kv_policy `policy` and these compression settings (flag names)."""
    from compression import Compressor
    from config import CompressionConfig

    return Compressor(CompressionConfig(kv_policy=policy, **settings))


# --- helpers the test files share ------------------------------------------------------------------------------------

# what differs between two runs of the same settings: timings, and where the run lives
NOT_COMPARED = frozenset({"time_s", "time_total_s", "time_per_sample_s", "compress_time_s", "compress_time_mean_s",
                          "run_dir", "merged_from"})


def run_argv(model_dir, *extra: str, samples: int = 3, tokens: int = 8, steps: int = 2) -> list[str]:
    """A small greedy gsm8k run on `model_dir` (the tiny model): the flags the CLI tests share, then `extra`."""
    return ["--model_name", str(model_dir), "--task", "gsm8k", "--max_samples", str(samples), "--max_new_tokens",
            str(tokens), "--temperature", "0", "--latent_steps", str(steps), *extra]


def results_of(run_dir: Path) -> list[dict]:
    """RUN_DIR/results.jsonl, one dict per line."""
    import json

    return [json.loads(line) for line in (Path(run_dir) / "results.jsonl").read_text().splitlines()]


def untimed(x):
    """Records or a summary without what may differ between equal runs (NOT_COMPARED), at any depth."""
    if isinstance(x, dict):
        return {k: untimed(v) for k, v in x.items() if k not in NOT_COMPARED}
    return [untimed(v) for v in x] if isinstance(x, list) else x


def exit_2(argv: list[str], capsys, one_line: bool = False) -> str:
    """run.main(argv) ends with exit code 2 and no traceback; returns its last stderr line (one_line: the only one)."""
    import run

    with pytest.raises(SystemExit) as e:
        run.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and not any("Traceback" in line for line in err), err
    if one_line:
        assert len(err) == 1, err
    return err[-1]
