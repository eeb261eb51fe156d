"""The command line as a user meets it: bad input, run directories, resume, interruption, determinism, and one
end-to-end run of the real embedded SmolLM2 in a fresh process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import config
import registry
import run
from tests.conftest import ROOT, results_of, run_argv, untimed

SUMMARY_KEYS = ["method", "task", "model", "prompt", "n", "correct", "accuracy", "accuracy_ci95", "latent_steps",
                "compression", "seed", "time_total_s", "time_per_sample_s", "generated_tokens_mean",
                "kv_tokens_judger_mean", "kv_bytes_judger_mean"]
RECORD_KEYS = ["index", "question", "gold", "prediction", "correct", "output", "generated_tokens", "time_s", "agents"]
AGENT_KEYS = ["name", "role", "model", "prompt_tokens", "latent_steps", "output_tokens", "kv_tokens_in",
              "kv_tokens_out", "kv_bytes_in", "kv_bytes_out", "time_s"]


def _cli(tiny_model_dir, out, *extra):
    return run_argv(tiny_model_dir, "--output_dir", str(out), *extra)


def _run_dir(out: Path) -> Path:
    dirs = [p for p in out.iterdir() if p.is_dir()]
    assert len(dirs) == 1
    return dirs[0]


@pytest.mark.parametrize("argv, words", [
    (["--method", "latent_mas", "--latent_steps", "-1"], "--latent_steps"),
    (["--method", "baseline", "--max_samples", "0"], "--max_samples"),
    (["--method", "baseline", "--max_samples", "-2"], "--max_samples"),
    (["--method", "baseline", "--temperature", "-0.1"], "--temperature"),
    (["--method", "baseline", "--top_p", "0"], "--top_p"),
    (["--method", "baseline", "--top_p", "1.5"], "--top_p"),
    (["--method", "baseline", "--generate_bs", "0"], "--generate_bs"),
    (["--method", "nope"], "--method"),
    (["--task", "gsm8k"], "--method is required"),
    (["--method", "baseline", "--data_source", "file"], "--data_path"),
    (["--method", "baseline", "--resume", "/nonexistent/run"], "config.json"),
])
def test_bad_flags_exit_2_with_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        run.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


@pytest.mark.parametrize("model, words", [
    ("no-such-alias", "unknown model"),
    ("org/definitely-not-a-model-xyz", "HF_HUB_OFFLINE"),
])
def test_unknown_model_exits_2(model, words, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run.main(["--method", "baseline", "--model_name", model, "--max_samples", "1", "--output_dir", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert words in err[-1] and not list(tmp_path.iterdir())


@pytest.mark.parametrize("content, words", [
    (None, "data"),  # missing file
    ("{not json", "data"),
    ('[{"prompt": "x", "solution": "y"}]', "question"),
])
def test_bad_data_file_exits_2(content, words, tmp_path, capsys):
    path = tmp_path / "items.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as e:
        run.main(["--method", "baseline", "--data_path", str(path), "--max_samples", "1",
                  "--output_dir", str(tmp_path / "runs")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert words in err[-1].lower()


def test_hub_unreachable_names_offline_alternatives(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run.main(["--method", "baseline", "--data_source", "hub", "--max_samples", "1",
                  "--output_dir", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--data_source package" in err or "--data_path" in err


@pytest.mark.parametrize("method", ["baseline", "text_mas", "latent_mas"])
def test_run_writes_config_results_summary(method, tiny_model_dir, tmp_path, capsys):
    assert run.main(["--method", method, *_cli(tiny_model_dir, tmp_path)]) == 0
    rd = _run_dir(tmp_path)
    assert method in rd.name and "gsm8k" in rd.name
    config = json.loads((rd / "config.json").read_text())
    assert config["args"]["method"] == method and config["data"]["source"] == "package"
    assert "transformers" in config["environment"] and "git_commit" in config["environment"]
    summary = json.loads((rd / "summary.json").read_text())
    assert all(k in summary for k in SUMMARY_KEYS)
    assert summary["n"] == 3 and summary["complete"]
    lo, hi = summary["accuracy_ci95"]
    assert 0 <= lo <= summary["accuracy"] <= hi <= 1
    records = results_of(rd)
    assert [r["index"] for r in records] == [0, 1, 2]
    n_agents = 1 if method == "baseline" else 4
    for r in records:
        assert all(k in r for k in RECORD_KEYS) and len(r["agents"]) == n_agents
        assert all(k in a for a in r["agents"] for k in AGENT_KEYS)
        assert r["generated_tokens"] == sum(a["output_tokens"] for a in r["agents"]) > 0
    if method == "latent_mas":
        assert summary["kv_bytes_judger_mean"] > 0 and summary["kv_tokens_judger_mean"] > 0
        assert all("output" in r["agents"][-1] and "output" not in r["agents"][0] for r in records)
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line)["n"] == 3


def test_same_seed_same_results(tiny_model_dir, tmp_path):
    for name in ("a", "b"):
        assert run.main(["--method", "latent_mas", *_cli(tiny_model_dir, tmp_path / name), "--temperature", "0.8",
                         "--top_p", "0.9"]) == 0
    a, b = (results_of(_run_dir(tmp_path / n)) for n in ("a", "b"))
    assert untimed(a) == untimed(b)
    assert any(r["generated_tokens"] > 0 for r in a)


def test_resume_after_crash_keeps_everything_once(tiny_model_dir, tmp_path):
    assert run.main(["--method", "latent_mas", *_cli(tiny_model_dir, tmp_path / "full")]) == 0
    full = results_of(_run_dir(tmp_path / "full"))
    assert run.main(["--method", "latent_mas", *_cli(tiny_model_dir, tmp_path / "crash")]) == 0
    rd = _run_dir(tmp_path / "crash")
    lines = (rd / "results.jsonl").read_text().splitlines(keepends=True)
    # a crash after item 0, in the middle of writing item 1
    (rd / "results.jsonl").write_text(lines[0] + lines[1][: len(lines[1]) // 2])
    (rd / "summary.json").unlink()
    assert run.main(["--resume", str(rd)]) == 0
    resumed = results_of(rd)
    assert [r["index"] for r in resumed] == [0, 1, 2]
    assert untimed(resumed) == untimed(full)
    assert json.loads((rd / "summary.json").read_text())["n"] == 3


def test_ctrl_c_keeps_finished_items(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import methods.latent_mas as lm

    real = lm.run_batch
    calls = {"n": 0}

    def flaky(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(lm, "run_batch", flaky)
    assert run.main(["--method", "latent_mas", *_cli(tiny_model_dir, tmp_path)]) == 130
    rd = _run_dir(tmp_path)
    assert [r["index"] for r in results_of(rd)] == [0]
    summary = json.loads((rd / "summary.json").read_text())
    assert summary["n"] == 1 and not summary["complete"]
    assert f"--resume {rd}" in capsys.readouterr().err
    monkeypatch.setattr(lm, "run_batch", real)
    assert run.main(["--resume", str(rd)]) == 0
    assert [r["index"] for r in results_of(rd)] == [0, 1, 2]


def test_docs_flags_table_matches_argparse():
    docs = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    assert config.flags_markdown() in docs, "regenerate: python -c 'import config; print(config.flags_markdown())'"
    assert registry.tasks_markdown() in docs, "regenerate from registry.tasks_markdown()"


def test_embedded_smollm2_end_to_end_in_a_fresh_process(smol, tmp_path):
    """The main job as a user runs it: offline, embedded default model, a real process."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "run.py", "--method", "latent_mas", "--task", "gsm8k", "--max_samples", "1",
         "--max_new_tokens", "24", "--temperature", "0", "--output_dir", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["model"] == "smollm2-135m" and summary["n"] == 1
    rec = results_of(_run_dir(tmp_path))[0]
    judger = rec["agents"][-1]
    assert rec["gold"] == "18" and 0 < judger["output_tokens"] <= 24 and judger["output"]
    # 30 layers x 3 KV heads x 64 dims x (K and V) x 4 bytes per cached token
    assert judger["kv_bytes_in"] == judger["kv_tokens_in"] * 30 * 3 * 64 * 2 * 4
    assert judger["kv_tokens_in"] == sum(a["prompt_tokens"] + a["latent_steps"] for a in rec["agents"][:3])


def test_top_level_help_lists_commands_then_the_run_flags(capsys):
    """`run.py --help` names every command and still shows the default command's flags and task choices (scripts and
    users read the run's settings there); a command's own --help shows only its flags."""
    assert run.main(["--help"]) == 0
    text = capsys.readouterr().out
    for c in run.COMMANDS:
        assert c.name in text
    for flag in ("--method", "--task", "--latent_steps", "--resume", "--kv_policy"):
        assert flag in text
    assert all(task in text for task in registry.TASKS)
    with pytest.raises(SystemExit) as e:
        run.main(["sweep", "--help"])
    assert e.value.code == 0
    sweep_help = capsys.readouterr().out
    assert "--dry_run" in sweep_help and "--resume" not in sweep_help and "--run_dir" not in sweep_help
