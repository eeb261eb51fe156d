"""Reports over run directories (report.py) and the observer of latent_mas runs (observe.py): heatmaps, masks and
embeddings written per item and transition, never overwritten, readable back."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import registry
import report
import run
from config import RunConfig
from data import Item
from errors import RunError
from methods import MethodConfig, get_method
from models import ModelWrapper
from observe import Observer, create_exclusive, kept_mask, observer_from_args
from report.runs import find_runs, load_run, series_key, series_label
from rundir import summarize
from tests.conftest import ROOT, compressor, settings
from utils import wilson_ci

PNG = b"\x89PNG\r\n\x1a\n"


def make_run(parent: Path, name: str, method: str = "latent_mas", model: str = "smollm2-135m", task: str = "gsm8k",
             source: str = "package", policy: str | None = None, keep: float = 0.8, n: int = 10, correct: int = 5,
             fidelity: bool = False, steps: int = 10, write_summary: bool = True, **over) -> Path:
    """A run directory as run.py writes it, with made-up numbers."""
    d = parent / name
    d.mkdir(parents=True)
    args = {"method": method, "model_name": model, "task": task, "prompt": "sequential", "latent_steps": steps,
            "kv_policy": policy or "none", "kv_keep": keep, "kv_scope": "shared", "kv_min_keep": 5,
            "kv_query": "embed-mean", "kv_protect": "none", "kv_positions": "original", "compress_at": "every",
            "include_old_prompts": False, "seed": 42, "temperature": 0.0, "max_new_tokens": 256,
            "data_path": None, **over}
    data = {"task": task, "source": source, "split": "test", "n_items": n, "n_options": None, "note": ""}
    full, kept = 400, int(400 * (keep ** 2 if policy else 1))
    records = []
    for i in range(n):
        judger = {"name": "judger", "role": "judger", "prompt_tokens": 100, "latent_steps": 0, "output_tokens": 50,
                  "kv_tokens_in": kept, "kv_tokens_out": kept + 149, "kv_bytes_in": kept * 23040,
                  "kv_bytes_out": (kept + 149) * 23040, "time_s": 1.0}
        rec = {"index": i, "question": f"q{i}", "gold": "1", "prediction": "1" if i < correct else "2",
               "correct": i < correct, "extraction": "boxed", "output": "x", "generated_tokens": 50,
               "time_s": 2.0 + (method == "text_mas"), "agents": [judger]}
        if policy:
            judger.update(kv_tokens_full=full, compress_time_s=0.01)
            rec["kv_kept_share"] = kept / full
            if fidelity:
                rec["fidelity"] = {"agreement": keep, "kl": 1 - keep, "output_match": keep > 0.7}
        records.append(rec)
    (d / "config.json").write_text(json.dumps({"args": args, "data": data, "dtype": "torch.float32"}))
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if write_summary:
        summary = summarize(records, RunConfig.from_saved(args), data, n)
        (d / "summary.json").write_text(json.dumps(summary))
    return d


def test_report_writes_table_and_plots(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "base", method="baseline", correct=4)
    make_run(runs, "text", method="text_mas", correct=5)
    make_run(runs, "latent", correct=6)
    for policy in ("knn-top", "snapkv"):
        for keep in (0.5, 0.8):
            make_run(runs, f"{policy}-{keep}", policy=policy, keep=keep, correct=int(10 * keep) - 1, fidelity=True)
    out = tmp_path / "rep"
    assert run.main(["report", str(runs), "--out", str(out)]) == 0
    for name in ("report.md", "report.json", "accuracy.png", "accuracy_vs_kv.png", "time_tokens.png",
                 "fidelity.png", "fidelity_vs_kv.png"):
        assert (out / name).exists(), name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == PNG
    md = (out / "report.md").read_text()
    assert "| G1 | latent_mas m10 knn-top k0.5 | 10 | 0.400 [" in md
    assert "latent_mas m10 | 10 | 0.600" in md
    assert "Not comparable" not in md  # one model, task and source
    res = json.loads((out / "report.json").read_text())
    assert len(res["groups"]) == 1 and len(res["runs"]) == 7
    row = next(r for r in res["runs"] if r["run"] == "snapkv-0.5")
    assert row["accuracy_ci95"] == wilson_ci(4, 10)
    assert row["kv_kept_share_judger_mean"] == 0.25 and row["fidelity_agreement_mean"] == 0.5
    methods = {m["method"]: m for m in res["per_method"]}
    assert methods["text_mas"]["time_per_item_s"] == 3.0 and methods["latent_mas"]["runs"] == 5


def test_series_are_one_line_per_policy_and_points_per_keep(tmp_path):
    runs = [load_run(make_run(tmp_path, f"{p}{k}", policy=p, keep=k)) for p in ("knorm", "random")
            for k in (0.4, 0.6, 0.9)]
    runs.append(load_run(make_run(tmp_path, "r-layer", policy="random", keep=0.5, kv_scope="layer")))
    keys = sorted({series_key(r) for r in runs}, key=str)
    assert len(keys) == 3
    labels = sorted(series_label(k, keys) for k in keys)
    assert labels == ["knorm scope=shared", "random scope=layer", "random scope=shared"]  # what varies is named
    assert series_label(keys[0], keys[:1]) == "knorm"  # alone, the defaults go unsaid


def test_mixed_models_and_tasks_are_never_on_one_axis(tmp_path):
    make_run(tmp_path / "a", "smol", model="smollm2-135m")
    make_run(tmp_path / "a", "qwen", model="Qwen/Qwen3-4B")
    make_run(tmp_path / "a", "arc", task="arc_easy")
    make_run(tmp_path / "a", "hub", source="hub")
    make_run(tmp_path / "a", "smol-k", policy="knn-bottom", keep=0.6, max_new_tokens=512)
    out = tmp_path / "rep"
    res = report.build_report([str(tmp_path / "a")], out)
    assert len(res["groups"]) == 4
    assert sorted(len(g["runs"]) for g in res["groups"]) == [1, 1, 1, 2]
    md = (out / "report.md").read_text()
    assert "Not comparable" in md and "G4" in md
    assert "differ in max_new_tokens (256, 512)" in md  # a difference inside a group is named too
    # one panel per group in the accuracy plot: its height grows with the groups, and the title says why
    from PIL import Image

    single = tmp_path / "single"
    report.build_report([str(tmp_path / "a" / "smol")], single)
    assert Image.open(out / "accuracy.png").size[1] > 2 * Image.open(single / "accuracy.png").size[1]


def test_report_rebuilds_a_missing_summary_and_refuses_non_runs(tmp_path, capsys):
    d = make_run(tmp_path, "killed", n=4, correct=3, write_summary=False)
    with open(d / "results.jsonl", "a") as f:
        f.write('{"index": 4, "quest')  # half-written last line
    before = (d / "results.jsonl").read_bytes()
    r = load_run(d)
    assert r.get("n") == 4 and r.get("accuracy") == 0.75
    assert (d / "results.jsonl").read_bytes() == before  # the report never edits a run directory
    shards = make_run(tmp_path, "shards", n=4, correct=2, write_summary=False)  # a scale-out launch, not merged
    (shards / "parts").mkdir()
    lines = (shards / "results.jsonl").read_text().splitlines(keepends=True)
    (shards / "results.jsonl").unlink()
    (shards / "parts" / "part-0.jsonl").write_text("".join(lines[:2]))
    (shards / "parts" / "part-1.jsonl").write_text("".join(lines[1:]))  # one record in both: counted once
    assert load_run(shards).get("n") == 4 and load_run(shards).get("correct") == 2
    (tmp_path / "empty").mkdir()
    for argv in ([str(tmp_path / "empty"), "--out", str(tmp_path / "o")], [str(tmp_path / "nope")]):
        with pytest.raises(SystemExit) as e:
            run.main(["report", *argv])
        assert e.value.code == 2
    assert "neither a run directory" in capsys.readouterr().err


def set_outcomes(d: Path, correct: list[bool], split: str | None = None) -> Path:
    """Give a made-up run these per-item outcomes (items 0..n-1) and rewrite its summary as run.py would."""
    config = json.loads((d / "config.json").read_text())
    if split:
        config["data"]["split"] = split
        (d / "config.json").write_text(json.dumps(config))
    records = [json.loads(line) for line in (d / "results.jsonl").read_text().splitlines()][:len(correct)]
    for rec, ok in zip(records, correct):
        rec["correct"], rec["prediction"] = ok, "1" if ok else "2"
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = summarize(records, RunConfig.from_saved(config["args"]), config["data"], len(records))
    (d / "summary.json").write_text(json.dumps(summary))
    return d


def test_seeds_of_one_setting_are_summarised_together(tmp_path):
    runs = tmp_path / "runs"
    for seed, correct in ((1, 5), (2, 6), (3, 7)):
        make_run(runs, f"plain-s{seed}", correct=correct, seed=seed)
    for seed, correct in ((1, 4), (2, 4)):
        make_run(runs, f"knn-s{seed}", policy="knn-top", keep=0.5, correct=correct, seed=seed)
    make_run(runs, "knn-k0.8", policy="knn-top", keep=0.8, correct=6, seed=1)  # another setting, one seed
    make_run(runs, "plain-long", correct=6, seed=4, max_new_tokens=512)  # differs in more than the seed
    res = report.build_report([str(runs)], tmp_path / "rep")
    cells = {c["setting"]: c for c in res["seeds"]}
    assert sorted(cells) == ["latent_mas m10", "latent_mas m10 knn-top k0.5"]
    plain = cells["latent_mas m10"]
    assert plain["seeds"] == [1, 2, 3] and plain["runs"] == ["plain-s1", "plain-s2", "plain-s3"]
    assert plain["accuracy_mean"] == pytest.approx(0.6) and plain["accuracy_sd"] == pytest.approx(0.1)
    assert (plain["accuracy_min"], plain["accuracy_max"]) == (0.5, 0.7)
    half = 4.302653 * 0.1 / 3 ** 0.5  # t(0.975, 2) sd / sqrt(3)
    assert plain["accuracy_t_ci95"] == [pytest.approx(0.6 - half, abs=1e-6), pytest.approx(0.6 + half, abs=1e-6)]
    knn = cells["latent_mas m10 knn-top k0.5"]
    assert knn["accuracy_sd"] == 0.0 and knn["accuracy_t_ci95"] == [pytest.approx(0.4), pytest.approx(0.4)]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Seeds" in md and "t-interval" in md
    assert "| G1 | latent_mas m10 | 1, 2, 3 | 10 | 0.600 | 0.100 | 0.500-0.700 | [0.352, 0.848] |" in md
    assert "| G1 | latent_mas m10 knn-top k0.5 s2 | 10 | 0.400 [" in md  # runs of one setting are told apart by seed
    assert (tmp_path / "rep" / "accuracy_vs_kv.png").read_bytes()[:8] == PNG  # seeds drawn as one point


def test_paired_comparison_of_runs_over_the_same_items(tmp_path):
    runs = tmp_path / "runs"
    ref = [True] * 5 + [False] * 5
    set_outcomes(make_run(runs, "plain"), ref)
    set_outcomes(make_run(runs, "knn-0.5", policy="knn-top", keep=0.5, fidelity=True), [False] * 10)  # 5 losses
    set_outcomes(make_run(runs, "knn-0.8", policy="knn-top", keep=0.8, fidelity=True),
                 [True] * 4 + [False] + [True] * 2 + [False] * 3)  # 2 wins, 1 loss
    set_outcomes(make_run(runs, "text", method="text_mas"), ref)
    res = report.build_report([str(runs)], tmp_path / "rep")
    pairs = {p["run"]: p for p in res["paired"]}
    # compressed runs against the uncompressed one; that one against the group's first run (text_mas before latent)
    assert {k: p["reference"] for k, p in pairs.items()} == {"knn-0.5": "plain", "knn-0.8": "plain", "plain": "text"}
    lost = pairs["knn-0.5"]
    assert (lost["n"], lost["wins"], lost["losses"], lost["ties"]) == (10, 0, 5, 5)
    assert lost["p_mcnemar_exact"] == 0.0625 and lost["diff"] == pytest.approx(-0.5)
    lo, hi = lost["diff_ci95_bootstrap"]
    assert lo <= -0.5 <= hi <= 0 and lost["fidelity_agreement_mean"] == 0.5
    assert lost["kv_bytes_judger_mean"] < lost["kv_bytes_judger_mean_reference"]
    mixed = pairs["knn-0.8"]
    assert (mixed["wins"], mixed["losses"], mixed["ties"], mixed["p_mcnemar_exact"]) == (2, 1, 7, 1.0)
    assert pairs["plain"]["diff"] == 0 and pairs["plain"]["diff_ci95_bootstrap"] == [0.0, 0.0]
    md = (tmp_path / "rep" / "report.md").read_text()
    section = md[md.index("## Paired comparisons"):md.index("## Per method")]
    assert "paired" in section and "McNemar" in section and "bootstrap" in section
    assert "Δ accuracy [95% paired bootstrap CI] | wins / losses / ties | McNemar exact p" in section
    assert (f"| G1 | latent_mas m10 knn-top k0.5 | latent_mas m10 | 10 | 0.000 / 0.500 | -0.500 [{lo:+.3f}, {hi:+.3f}] "
            "| 0 / 5 / 5 | 0.0625 | 0.500 | 0.5000 | 2.20 / 8.79 |") in section
    assert (tmp_path / "rep" / "paired.png").read_bytes()[:8] == PNG
    again = report.build_report([str(runs)], tmp_path / "rep2")  # the bootstrap is seeded: the same intervals
    assert [p["diff_ci95_bootstrap"] for p in again["paired"]] == [p["diff_ci95_bootstrap"] for p in res["paired"]]


def test_runs_over_different_items_are_refused_from_pairing(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "plain", n=10)
    make_run(runs, "short", policy="knn-top", keep=0.5, n=6)  # its items are a subset: not the same items
    set_outcomes(make_run(runs, "val", policy="snapkv", keep=0.5), [True] * 10, split="validation")
    res = report.build_report([str(runs)], tmp_path / "rep")
    assert res["paired"] == []
    assert len(res["not_paired"]) == 2
    md = (tmp_path / "rep" / "report.md").read_text()
    assert ("- Not paired: `latent_mas m10 knn-top k0.5` (short) is not paired with `latent_mas m10` (plain): "
            "different items (6 vs 10 items, 6 in common).") in md
    assert "(val) is not paired with `latent_mas m10` (plain): different splits (validation vs test)." in md
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["not_paired"] == res["not_paired"]


def test_reference_is_the_uncompressed_run_of_the_same_seed_or_the_baseline_flag(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "base", method="baseline", correct=3)
    for seed in (1, 2):
        make_run(runs, f"plain-s{seed}", seed=seed, correct=5)
        make_run(runs, f"knn-s{seed}", policy="knn-top", keep=0.5, seed=seed, correct=4)
    make_run(runs, "knn-s3", policy="knn-top", keep=0.5, seed=3, correct=4)  # no uncompressed run of seed 3
    res = report.build_report([str(runs)], tmp_path / "rep")
    ref = {p["run"]: p["reference"] for p in res["paired"]}
    assert ref == {"plain-s1": "base", "plain-s2": "base", "knn-s1": "plain-s1", "knn-s2": "plain-s2",
                   "knn-s3": "base"}
    out = tmp_path / "rep2"
    assert run.main(["report", str(runs), "--out", str(out), "--baseline", str(runs / "plain-s2")]) == 0
    res = json.loads((out / "report.json").read_text())
    assert {p["reference"] for p in res["paired"]} == {"plain-s2"} and len(res["paired"]) == 5
    assert "Every run is paired with the baseline `latent_mas m10 s2`" in (out / "report.md").read_text()
    # a baseline outside the runs given joins the report; one of another task is refused from pairing
    other = make_run(tmp_path / "elsewhere", "arc", task="arc_easy")
    res = report.build_report([str(runs / "knn-s1")], tmp_path / "rep3", baseline=str(other))
    assert res["paired"] == [] and "different model, task or data source" in res["not_paired"][0]
    with pytest.raises(report.ReportError, match="--baseline"):
        report.build_report([str(runs)], tmp_path / "rep4", baseline=str(tmp_path / "nope"))


# --- observer: heatmaps and embeddings ------------------------------------------------------------------------------

QUESTIONS = ["How many apples are left if each day the team sells 3 of 17?", "What is the total?"]


def _observed_run(tiny, run_dir: Path, items, compressor=None, steps=2):
    model, tok, dev = tiny
    w = ModelWrapper(model, tok, dev)
    obs = Observer(run_dir, heatmaps=True, embeddings=True, label="knn-top k0.5, layer")
    cfg = MethodConfig(answer_type="number", max_new_tokens=4, temperature=0.0, top_p=1.0, seed=1,
                       latent_steps=steps, compressor=compressor, observer=obs)
    with torch.inference_mode():
        records = get_method("latent_mas")(w, items, cfg)
    return obs, records


def test_heatmaps_and_embeddings_per_item_and_transition(tiny, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    items = [Item(index=i + 3, question=q, gold="1", meta={}) for i, q in enumerate(QUESTIONS)]
    comp = compressor("knn-top", kv_keep=0.5, kv_scope="layer", kv_min_keep=2)
    obs, records = _observed_run(tiny, tmp_path, items, comp, steps=2)
    heat = sorted(p.name for p in (tmp_path / "heatmaps").iterdir())
    expected = [f"item{i:05d}_{k}-{a}_to_{b}.{ext}" for i in (3, 4)
                for k, a, b in ((1, "planner", "critic"), (2, "critic", "refiner"), (3, "refiner", "judger"))
                for ext in ("npz", "png")]
    assert heat == sorted(expected)
    emb = sorted(p.name for p in (tmp_path / "embeddings").iterdir())
    assert emb == sorted(f"item{i:05d}_{k}-{a}.safetensors" for i in (3, 4)
                         for k, a in ((0, "planner"), (1, "critic"), (2, "refiner")))
    assert all((tmp_path / "heatmaps" / n).read_bytes()[:8] == PNG for n in heat if n.endswith(".png"))

    # the arrays behind a heatmap: one column per real entry of the cache the judger was handed, the kept mask
    # matches the entries the judger really got (the record's kv_tokens_in), per layer
    judger_in = records[1]["agents"][-1]["kv_tokens_in"]
    before = records[1]["agents"][-1]["kv_tokens_before"]
    with np.load(tmp_path / "heatmaps" / "item00004_3-refiner_to_judger.npz", allow_pickle=False) as z:
        sim, kept, kinds = z["similarity"], z["kept"], z["kinds"]
        assert sim.shape == (4, before) and kept.shape == (4, 2, before) and kinds.shape == (before,)
        assert (kept.sum(axis=-1) == judger_in).all()
        assert np.abs(sim).max() <= 1 + 1e-5 and str(z["target"]).lower() == "judger"
        assert int(z["item_index"]) == 4

    # embeddings: latents (steps, D), first and last hidden states, documented metadata
    path = tmp_path / "embeddings" / "item00003_1-critic.safetensors"
    t = load_file(path)
    assert t["latents"].shape == (2, 64) and t["hidden_first"].shape == (64,) and t["hidden_last"].shape == (64,)
    assert t["latents"].dtype == torch.float32
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "latentmas-kv embeddings v1" and meta["item_index"] == "3" and meta["agent_index"] == "1"

    # the hooks stay outside the method's arithmetic: the same records (times aside) as a run without them
    model, tok, dev = tiny
    cfg = MethodConfig(answer_type="number", max_new_tokens=4, temperature=0.0, top_p=1.0, seed=1, latent_steps=2,
                       compressor=comp)
    with torch.inference_mode():
        plain = get_method("latent_mas")(ModelWrapper(model, tok, dev), items, cfg)

    def strip(recs):
        return [{k: v for k, v in r.items() if k not in ("time_s", "agents")}
                | {"agents": [{k: v for k, v in a.items() if "time" not in k} for a in r["agents"]]} for r in recs]

    assert strip(records) == strip(plain)

    # an item again into the same run directory: new files beside the old, none overwritten
    stamp = {p: p.read_bytes() for p in tmp_path.rglob("*.*")}
    _observed_run(tiny, tmp_path, items[:1], comp, steps=2)
    assert all(p.read_bytes() == b for p, b in stamp.items())
    assert (tmp_path / "heatmaps" / "item00003_1-planner_to_critic.1.png").exists()
    assert (tmp_path / "heatmaps" / "item00003_1-planner_to_critic.1.npz").exists()
    assert (tmp_path / "embeddings" / "item00003_2-refiner.1.safetensors").exists()
    assert len(list(tmp_path.rglob("*.*"))) == len(stamp) + 9


def test_kept_mask_ignores_padding_slots():
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    index = torch.tensor([[[[0, 2, 3]], [[0, 1, 3]]]])  # (1, B, 1, K): row 0 keeps 2 (one padding slot at 0)
    keep = torch.tensor([[0, 1, 1], [1, 1, 1]])
    m = kept_mask((index, keep), mask, n_layers=3, n_heads=2)
    assert m.shape == (3, 2, 2, 4)
    assert m[0, 0, 0].tolist() == [False, False, True, True] and m[2, 1, 1].tolist() == [True, True, False, True]
    assert kept_mask(None, mask, 3, 2)[1, 0, 1].tolist() == [False, True, True, True]


def test_create_exclusive_never_overwrites(tmp_path):
    (a,) = create_exclusive(tmp_path, "x", (".png",))
    a.write(b"first")
    a.close()
    b, c = create_exclusive(tmp_path, "x", (".png", ".npz"))
    b.close()
    c.close()
    assert Path(b.name).name == "x.1.png" and Path(c.name).name == "x.1.npz"
    assert (tmp_path / "x.png").read_bytes() == b"first"
    (tmp_path / "x.2.npz").write_bytes(b"")  # a stray file of the pair: the pair moves on together
    d, e = create_exclusive(tmp_path, "x", (".png", ".npz"))
    assert Path(d.name).name == "x.3.png" and not (tmp_path / "x.2.png").exists()


def test_flags_need_latent_mas_and_build_an_observer(tmp_path):
    with pytest.raises(RunError, match="--show_heatmaps works on the shared cache of --method latent_mas"):
        settings(["--method", "baseline", "--show_heatmaps"])
    args = settings(["--method", "latent_mas", "--save_embeddings", "--kv_policy", "snapkv"])
    obs = observer_from_args(args, tmp_path)
    assert obs.embeddings and not obs.heatmaps and "snapkv" in obs.label
    assert observer_from_args(settings(["--method", "latent_mas"]), tmp_path) is None


def test_example_logs_are_whole_runs_of_every_method_with_their_report():
    """example_logs/ holds what regenerate.sh writes: a complete run per method, records matching the summary, and
    the report over them."""
    script = (ROOT / "example_logs" / "regenerate.sh").read_text()
    runs = find_runs([str(ROOT / "example_logs" / d) for d in
                             ("baseline", "text_mas", "latent_mas", "latent_mas_knn-bottom_0.6")])
    assert {r.summary["method"] for r in runs} == set(registry.METHODS)
    for r in runs:
        assert f'--run_dir "$out/{r.path.name}"' in script
        assert r.summary["complete"] and r.summary["n"] == len(r.records) == r.settings.data.max_samples
        assert sum(x["correct"] for x in r.records) == r.summary["correct"]
    compressed = runs[-1].summary
    assert compressed["kv_kept_share_judger_mean"] < 1 and "fidelity_agreement_mean" in compressed
    written = {p.name for p in (ROOT / "example_logs" / "report").iterdir()}
    assert {"report.md", "report.json", "accuracy.png", "accuracy_vs_kv.png", "time_tokens.png",
            "fidelity.png"} <= written
