"""The typed run configuration (config.py): one field per flag, saved and read back, experiment files with
overrides, the refusals and warnings for settings that would do nothing, and a run directory written before the
typed configuration existed, which must still resume, merge and report."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import config
import run
from config import FLAGS, RunConfig
from methods import MethodConfig
from report.runs import load_run
from tests.conftest import ROOT, exit_2, run_argv, settings, untimed

pytestmark = pytest.mark.usefixtures("one_thread")

# config.json "args" as run.py wrote it before the typed configuration (no prefix_reuse, compile, code limits)
OLD_ARGS = {"method": "latent_mas", "model_name": "smollm2-135m", "task": "gsm8k", "prompt": "sequential",
            "agents": None, "first_agent_text": False, "data_source": "auto", "data_path": None, "split": None,
            "max_samples": 3, "latent_steps": 10, "latent_space_realign": False, "think": False,
            "text_mas_context_length": -1, "kv_policy": "knn-bottom", "kv_keep": 0.6, "kv_min_keep": 5,
            "kv_scope": "shared", "kv_query": "embed-mean", "kv_protect": "none", "kv_positions": "original",
            "compress_at": "every", "knn_filter": False, "knn_strategy": "top", "include_old_prompts": False,
            "fidelity": False, "temperature": 0.0, "top_p": 0.95, "max_new_tokens": 12, "generate_bs": 1, "seed": 42,
            "device": "auto", "dtype": "auto", "attn_implementation": None, "eval_workers": None, "num_shards": 1,
            "shard_id": 0, "run_dir": "run-v1", "device_map": None, "max_memory": None, "output_dir": "runs",
            "verbose": False, "show_heatmaps": False, "save_embeddings": False}


def _exit_2(argv, capsys) -> str:
    return exit_2(argv, capsys, one_line=True)


# --- one field per flag ----------------------------------------------------------------------------------------------

def test_every_flag_is_one_field_saved_and_read_back():
    dests = {a.dest for a in config.build_parser()._actions} - {"help", "config", "resume"}
    assert dests == set(FLAGS)
    assert config.RUNTIME == {"device", "device_map", "max_memory", "attn_implementation", "generate_bs",
                              "eval_workers", "verbose", "output_dir", "run_dir", "compile", "log_with", "log_dir"}
    cfg = RunConfig().updated({"method": "latent_mas", "kv_policy": "knorm", "kv_keep": 0.5, "prefix_reuse": False,
                               "code_timeout_s": 3.0, "generate_bs": 4})
    assert cfg.compression.kv_keep == 0.5 and cfg.model.prefix_reuse is False and cfg.decoding.generate_bs == 4
    assert RunConfig.from_saved(json.loads(json.dumps(cfg.flat()))) == cfg
    # an old file: missing fields take their defaults, fields that no longer exist are ignored
    old = RunConfig.from_saved({**OLD_ARGS, "resume": None, "some_removed_flag": 1})
    assert old.model.prefix_reuse is True and old.hardware.code_timeout_s is None
    assert old.compression.kv_policy == "knn-bottom" and old.differences(old.updated({"device": "cpu"})) == {}
    assert old.differences(old.updated({"seed": 1})) == {"seed": (42, 1)}


def test_summary_settings_names_and_labels_come_from_the_config():
    base = RunConfig().updated({"method": "baseline", "latent_steps": 3})
    s = base.summary_settings()
    assert s["prompt"] is None and s["latent_steps"] is None and s["compression"] is None
    assert base.run_name().startswith("baseline_gsm8k_smollm2-135m_nocomp_")
    lat = RunConfig().updated({"method": "latent_mas", "kv_policy": "snapkv", "kv_keep": 0.5, "kv_scope": "head",
                               "num_shards": 2, "shard_id": 1})
    assert set(lat.compression_settings()) == {"kv_policy", "kv_keep", "kv_scope", "kv_min_keep", "kv_query",
                                               "kv_protect", "kv_positions", "compress_at", "include_old_prompts",
                                               "kv_layers", "kvcomm_alpha", "kvcomm_mu", "kvcomm_sigma", "kv_quant",
                                               "kv_quant_group"}
    assert lat.run_name().startswith("latent_mas_gsm8k_smollm2-135m_m10_snapkv-k0.5-head-original_shard1of2_")
    assert lat.observer_label() == "snapkv k0.5, head" and base.observer_label() == ""
    assert set(config.series_defaults()) == set(lat.compression_settings()) - {"kv_policy", "kv_keep"}
    assert config.series_defaults()["kv_scope"] == "shared" and config.series_defaults()["kv_min_keep"] == 5


def test_choices_the_cli_offers_before_torch_loads_are_the_libraries_own():
    import compression
    import kv_state
    import registry

    assert FLAGS["kv_scope"].meta["choices"] == registry.SCOPES and kv_state.POSITIONS is registry.POSITIONS
    assert FLAGS["kv_positions"].meta["choices"] == registry.POSITIONS
    for scope in registry.SCOPES:
        for positions in registry.POSITIONS:
            compression.Compressor(config.CompressionConfig(kv_policy="knorm", kv_scope=scope, kv_positions=positions))
    with pytest.raises(compression.CompressionError, match="scope 'row'"):
        compression.Compressor(config.CompressionConfig(kv_policy="knorm", kv_scope="row"))


def test_method_config_takes_the_run_settings_by_name():
    cfg = RunConfig().updated({"method": "latent_mas", "max_new_tokens": 7, "temperature": 0.0, "top_p": 0.5,
                               "seed": 3, "latent_steps": 2, "think": "<think>", "include_old_prompts": True,
                               "eval_workers": 2, "code_timeout_s": 4.0, "code_memory_mb": 256, "fidelity": True,
                               "prompt": "hierarchical"})
    m = MethodConfig.from_run(cfg, "number", compressor="C", team="T", observer=None)
    assert (m.answer_type, m.max_new_tokens, m.temperature, m.top_p, m.seed) == ("number", 7, 0.0, 0.5, 3)
    assert (m.latent_steps, m.think, m.include_old_prompts, m.fidelity) == (2, "<think>", True, True)
    assert m.prompt == "hierarchical"
    assert (m.eval_workers, m.code_timeout_s, m.code_memory_mb, m.compressor, m.team) == (2, 4.0, 256, "C", "T")
    # nothing copied: the settings are the run's typed configuration, read by flag name
    assert set(vars(m)) == {"answer_type", "run", "compressor", "observer", "team", "models"} and m.run == cfg
    with pytest.raises(AttributeError):
        m.stacked_prompts  # noqa: B018 (one name per setting: the flag's)


# --- experiment files ------------------------------------------------------------------------------------------------

def test_config_file_flat_and_grouped_with_command_line_overrides(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("method: latent_mas\nmax_samples: 2\nno_prefix_reuse: true\n"
                 "compression:\n  knn_filter: true\n  knn_strategy: bottom\n  knn_percentage: 0.6\n"
                 "decoding:\n  temperature: 0\n  seed: 5\n")
    cfg = settings(["--config", str(f), "--max_samples", "4", "--seed", "6"])
    assert cfg.method == "latent_mas" and cfg.data.max_samples == 4 and cfg.decoding.seed == 6  # typed wins
    assert cfg.decoding.temperature == 0.0 and cfg.model.prefix_reuse is False
    assert cfg.compression.kv_policy == "knn-bottom" and cfg.compression.kv_keep == 0.6
    j = tmp_path / "exp.json"
    j.write_text(json.dumps({"method": "baseline", "--max_new_tokens": 9, "data_path": None}))
    cfg = settings(["--config", str(j)])
    assert cfg.method == "baseline" and cfg.decoding.max_new_tokens == 9 and cfg.data.data_path is None


@pytest.mark.parametrize("text, words", [
    ("method: latent_mas\nkv_kep: 0.5\n", "unknown setting 'kv_kep' (did you mean kv_keep?)"),
    ("method: latent_mas\nlatent:\n  kv_keep: 0.5\n", "kv_keep belongs to section compression, not latent"),
    ("method: latent_mas\ntemperature: .nan\n", "temperature: 'nan' is not a finite number"),
    ("method: latent_mas\nkv_keep: 1.5\n", "kv_keep: 1.5 is outside (0, 1]"),
    ("method: latent_mas\nkv_scope: token\n", "kv_scope: 'token' is not one of shared, layer, head"),
    ("method: latent_mas\nkv_keep: [0.5, 0.9]\n", "give one value"),
    ("method: latent_mas\nhandoff: everything\n", "handoff: 'everything' is not one of all, latent_only"),
    ("method: latent_mas\ntrace: yes please\n", "trace: give true or false"),
    ("method: latent_mas\nmax_samples: null\n", "max_samples: needs a value"),
    ("method: latent_mas\nresume: runs/x\n", "resume is not a setting"),
    ("- method\n- latent_mas\n", "give a mapping"),
    ("method: [latent_mas\n", "not valid YAML"),
])
def test_bad_config_files_end_in_one_line(text, words, tmp_path, capsys):
    f = tmp_path / "exp.yaml"
    f.write_text(text)
    line = _exit_2(["--config", str(f)], capsys)
    assert f"--config {f}" in line and words in line, line
    assert "no such file" in _exit_2(["--config", str(tmp_path / "nope.yaml")], capsys)


def test_shipped_experiment_files_are_valid_and_listed():
    files = sorted(p for p in (ROOT / "config").iterdir() if p.suffix in (".yaml", ".yml", ".json"))
    assert len(files) >= 3
    listing = (ROOT / "config" / "README.md").read_text()
    for f in files:
        if "grid" in config.read_mapping(f):  # a sweep file (handoff_methods.yaml): tests/test_handoff.py runs it
            assert f"`{f.name}`" in listing, f
            continue
        inv = config.parse_command_line(["--config", str(f)])
        cfg = config.new_run(inv.given)
        config.normalize(cfg)
        assert config.check(cfg, inv.given) == [], f
        assert f"`{f.name}`" in listing, f


# --- settings that would do nothing ----------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, words", [
    (["--method", "baseline", "--think"], "--think does nothing for --method baseline"),
    (["--method", "text_mas", "--latent_space_realign"], "--latent_space_realign does nothing for --method text_mas"),
    (["--method", "text_mas", "--include_old_prompts"], "--include_old_prompts does nothing"),
    (["--method", "latent_mas", "--kv_keep", "0.5"], "--kv_keep does nothing without a policy"),
    (["--method", "latent_mas", "--knn_percentage", "0.5", "--kv_scope", "head"],
     "--kv_keep, --kv_scope do nothing without a policy"),
    (["--method", "latent_mas", "--knn_strategy", "bottom"], "--knn_strategy goes with --knn_filter"),
    (["--method", "baseline", "--kv_policy", "knorm"], "--kv_policy works on the shared cache of --method latent_mas"),
    (["--method", "latent_mas", "--kv_query", "attention", "--kv_policy", "knorm"], "--kv_query attention"),
])
def test_settings_that_do_nothing_are_refused(argv, words, tmp_path, capsys):
    assert words in _exit_2([*argv, "--output_dir", str(tmp_path)], capsys)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv, words", [
    (["--method", "baseline", "--latent_steps", "3"], "--latent_steps does nothing for --method baseline"),
    (["--method", "latent_mas", "--text_mas_context_length", "64"], "--text_mas_context_length does nothing"),
    (["--method", "baseline", "--prompt", "hierarchical"], "--prompt does nothing for --method baseline"),
    (["--method", "baseline", "--eval_workers", "2"], "--eval_workers does nothing for --task gsm8k"),
])
def test_settings_that_are_merely_ignored_warn_once(argv, words, tmp_path, capsys):
    import runner

    (warning,) = runner.prepare(config.parse_command_line(argv)).warnings
    assert words in warning
    # the run prints it once, before it starts (here it then stops at a data file that does not exist)
    with pytest.raises(SystemExit):
        run.main([*argv, "--data_path", str(tmp_path / "missing.json"), "--output_dir", str(tmp_path / "runs")])
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if "warning" in ln]
    assert len(err) == 1 and err[0].startswith("run.py: warning: ") and words in err[0], err


def test_defaults_and_false_switches_are_never_flagged(tmp_path, capsys):
    f = tmp_path / "exp.yaml"
    f.write_text("method: baseline\nthink: false\nfidelity: false\n")
    import runner

    for argv in (["--config", str(f)], ["--method", "latent_mas", "--kv_policy", "knorm", "--kv_keep", "0.5",
                                        "--kv_scope", "layer"]):
        assert runner.prepare(config.parse_command_line(argv)).warnings == []
    assert capsys.readouterr().err == ""


# --- runs ------------------------------------------------------------------------------------------------------------

def _cli(tiny_model_dir, *extra):
    return run_argv(tiny_model_dir, "--method", "latent_mas", "--device", "cpu", *extra, samples=2, tokens=4, steps=1)


def test_prefix_reuse_and_compile_reach_the_model_wrapper(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import methods.latent_mas as lm
    import models

    seen, compiled = [], []
    real = lm.run_batch
    monkeypatch.setattr(lm, "run_batch", lambda w, items, cfg: seen.append(w.prefix_reuse) or real(w, items, cfg))
    switch = property(lambda w: bool(compiled), lambda w, on: compiled.append(on))
    monkeypatch.setattr(models.ModelWrapper, "compile", switch)
    assert run.main(_cli(tiny_model_dir, "--no_prefix_reuse", "--compile", "--output_dir", str(tmp_path))) == 0
    assert seen and not any(seen) and compiled == [True]
    (rd,) = tmp_path.iterdir()
    args = json.loads((rd / "config.json").read_text())["args"]
    assert args["prefix_reuse"] is False and args["compile"] is True
    capsys.readouterr()
    # prefix reuse changes numerics a little: a result setting; --compile is runtime
    assert "--prefix_reuse True (saved: False)" in _exit_2(["--resume", str(rd), "--config", str(_yaml(
        tmp_path, "no_prefix_reuse: false"))], capsys)
    assert run.main(["--resume", str(rd), "--compile"]) == 0


def _yaml(folder: Path, text: str) -> Path:
    f = folder / "exp.yaml"
    f.write_text(text + "\n")
    return f


def test_a_run_written_before_the_typed_config_resumes_merges_and_reports(tiny_model_dir, tmp_path, capsys):
    assert run.main(_cli(tiny_model_dir, "--kv_policy", "knn-bottom", "--kv_keep", "0.6", "--output_dir",
                         str(tmp_path / "new"))) == 0
    (new,) = (tmp_path / "new").iterdir()
    old = tmp_path / "old"
    shutil.copytree(new, old, ignore=shutil.ignore_patterns("run.lock"))
    cfg = json.loads((old / "config.json").read_text())
    cfg["args"] = {**OLD_ARGS, "model_name": str(tiny_model_dir), "max_samples": 2, "max_new_tokens": 4,
                   "latent_steps": 1, "device": "cpu"}
    (old / "config.json").write_text(json.dumps(cfg))
    lines = (old / "results.jsonl").read_text().splitlines(keepends=True)
    (old / "results.jsonl").write_text(lines[0])
    (old / "summary.json").unlink()
    # report rebuilds the summary of the stopped run from its old config
    assert load_run(old).summary["compression"]["kv_policy"] == "knn-bottom"
    assert run.main(["--resume", str(old)]) == 0
    resumed = (old / "results.jsonl").read_text().splitlines(keepends=True)
    assert resumed[0] == lines[0] and untimed(json.loads(resumed[1])) == untimed(json.loads(lines[1]))
    assert run.main(["merge", str(old), "--out", str(tmp_path / "merged")]) == 0
    assert run.main(["report", str(old), str(tmp_path / "merged"), "--out", str(tmp_path / "rep")]) == 0
    summaries = [json.loads((d / "summary.json").read_text()) for d in (new, old, tmp_path / "merged")]
    assert [untimed(s) for s in summaries[1:]] == [untimed(summaries[0])] * 2


