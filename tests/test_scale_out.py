"""Scale-out on CPU: data-parallel processes under torchrun (gloo, the launch accelerate uses on GPUs), per-part
resume, shards and `run.py merge`, and the checks of the scale-out flags."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import run
from parallel import Launch
from tests.conftest import ROOT, results_of, untimed

# what may differ between a run and its reproduction: timings and where it lives

pytestmark = pytest.mark.usefixtures("one_thread")


def _flags(tiny_model_dir, *extra):
    return ["--method", "latent_mas", "--model_name", str(tiny_model_dir), "--task", "gsm8k", "--max_samples", "3",
            "--max_new_tokens", "4", "--temperature", "0", "--latent_steps", "1", "--kv_policy", "knorm",
            "--kv_keep", "0.7", "--device", "cpu", *extra]


def _only_dir(out: Path) -> Path:
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    return d


def _same_run(run_dir: Path, reference: Path):
    assert untimed(results_of(run_dir)) == untimed(results_of(reference))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert untimed(summary) == untimed(json.loads((reference / "summary.json").read_text()))
    assert summary["n"] == 3 and summary["complete"]
    assert not (run_dir / "parts").exists()


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory) -> Path:
    """The single-process run everything else must reproduce."""
    out = tmp_path_factory.mktemp("single")
    assert run.main(_flags(tiny_model_dir, "--output_dir", str(out))) == 0
    return _only_dir(out)


def _torchrun(*args, timeout=600):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "run.py", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_torchrun_two_processes_equal_one_process(reference, tiny_model_dir, tmp_path):
    proc = _torchrun(*_flags(tiny_model_dir, "--output_dir", str(tmp_path)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = _only_dir(tmp_path)
    _same_run(run_dir, reference)
    assert "rank 0/2" in proc.stderr and "rank 1/2" in proc.stderr
    assert json.loads((run_dir / "config.json").read_text())["scale_out"]["processes"] == 2
    assert json.loads(proc.stdout.strip().splitlines()[-1])["n"] == 3  # one summary line, from the main process


def _interrupted_parts(reference: Path, target: Path) -> Path:
    """A run stopped mid-way, as a data-parallel launch leaves it: item 0 in part 0 followed by half of item 2 (a
    crash mid-write), item 1 in the part of a rank that an earlier, larger launch had; no results.jsonl."""
    recs = (reference / "results.jsonl").read_text().splitlines(keepends=True)
    (target / "parts").mkdir(parents=True)
    shutil.copy(reference / "config.json", target / "config.json")
    (target / "parts" / "part-0.jsonl").write_text(recs[0] + recs[2][: len(recs[2]) // 2])
    (target / "parts" / "part-3.jsonl").write_text(recs[1])
    return target


def test_torchrun_resumes_per_part(reference, tmp_path):
    run_dir = _interrupted_parts(reference, tmp_path / "run")
    proc = _torchrun("--resume", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"rank 0/2 .*\(2 done, 1 to go\)", proc.stderr), proc.stderr[-3000:]
    # rank 1's items are all done; it may read the run before or after rank 0 has written item 2 (the ranks agree
    # on the run directory before loading, then each goes at its own pace)
    assert re.search(r"rank 1/2 .*\([23] done, 0 to go\)", proc.stderr), proc.stderr[-3000:]
    _same_run(run_dir, reference)


def test_one_process_resumes_a_data_parallel_run(reference, tmp_path):
    run_dir = _interrupted_parts(reference, tmp_path / "run")
    assert run.main(["--resume", str(run_dir)]) == 0
    _same_run(run_dir, reference)


@pytest.fixture(scope="module")
def shards(tiny_model_dir, tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("shards")
    dirs = [out / f"shard{i}" for i in range(2)]
    for i, d in enumerate(dirs):
        assert run.main(_flags(tiny_model_dir, "--num_shards", "2", "--shard_id", str(i), "--run_dir", str(d))) == 0
    return dirs


def test_shards_merge_into_the_single_process_run(shards, reference, tmp_path, capsys):
    assert [r["index"] for r in results_of(shards[0])] == [0, 2] and [r["index"] for r in results_of(shards[1])] == [1]
    assert json.loads((shards[1] / "summary.json").read_text())["n_expected"] == 1
    capsys.readouterr()
    assert run.main(["merge", str(shards[1]), str(shards[0]), "--out", str(tmp_path / "merged")]) == 0
    _same_run(tmp_path / "merged", reference)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 3
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config["args"]["num_shards"] == 1 and len(config["merged_from"]) == 2
    # --output_dir PARENT puts the merged run directory inside PARENT, as a run does
    assert run.main(["merge", str(shards[0]), str(shards[1]), "--output_dir", str(tmp_path / "parent")]) == 0
    (merged,) = (tmp_path / "parent").iterdir()
    _same_run(merged, reference)


def test_run_dir_continues_the_same_run(shards, tiny_model_dir, capsys):
    before = results_of(shards[0])
    assert run.main(_flags(tiny_model_dir, "--num_shards", "2", "--shard_id", "0", "--run_dir", str(shards[0]))) == 0
    assert "(2 done, 0 to go)" in capsys.readouterr().err
    assert results_of(shards[0]) == before


def _copy(src: Path, dst: Path, args=None, drop_last=False, add=None) -> Path:
    shutil.copytree(src, dst)
    if args:
        cfg = json.loads((dst / "config.json").read_text())
        cfg["args"].update(args)
        (dst / "config.json").write_text(json.dumps(cfg))
    lines = (dst / "results.jsonl").read_text().splitlines(keepends=True)
    if drop_last:
        lines = lines[:-1]
    (dst / "results.jsonl").write_text("".join(lines + (add or [])))
    return dst


@pytest.mark.parametrize("case, words", [
    ("conflict", "max_new_tokens"),
    ("missing_shard", "missing shard(s) 1 of 2"),
    ("twice", "shard 0 is given 2 times"),
    ("missing_items", "lacks items 2"),
    ("overlap", "item 0 is recorded by both"),
    ("not_a_run", "no config.json"),
    ("out_taken", "not empty"),
])
def test_merge_refuses_with_a_clear_message(case, words, shards, tmp_path, capsys):
    s0, s1 = shards
    out = ["--out", str(tmp_path / "merged")]
    if case == "conflict":
        dirs = [s0, _copy(s1, tmp_path / "s1", args={"max_new_tokens": 8})]
    elif case == "missing_shard":
        dirs = [s0]
    elif case == "twice":
        dirs = [s0, s1, _copy(s0, tmp_path / "again")]
    elif case == "missing_items":
        dirs = [_copy(s0, tmp_path / "s0", drop_last=True), s1]
    elif case == "overlap":
        dirs = [s0, _copy(s1, tmp_path / "s1", add=[(s0 / "results.jsonl").read_text().splitlines(True)[0]])]
    elif case == "not_a_run":
        (tmp_path / "empty").mkdir()
        dirs = [s0, tmp_path / "empty"]
    else:
        (tmp_path / "merged").mkdir()
        (tmp_path / "merged" / "x").write_text("x")
        dirs = [s0, s1]
    with pytest.raises(SystemExit) as e:
        run.main(["merge", *map(str, dirs), *out])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("run.py merge: error:") and words in err[0], err
    if case == "missing_items":
        assert f"--resume {tmp_path / 's0'}" in err[0]


def test_merge_allow_missing_writes_a_partial_run(shards, tmp_path):
    assert run.main(["merge", str(shards[0]), "--out", str(tmp_path / "m"), "--allow_missing"]) == 0
    summary = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert summary["n"] == 2 and summary["n_expected"] == 3 and not summary["complete"]


@pytest.mark.parametrize("argv, env, words", [
    (["--num_shards", "2", "--shard_id", "2"], {}, "--shard_id 2"),
    (["--device_map", "auto"], {"WORLD_SIZE": "2", "RANK": "0"}, "--device_map"),
    (["--device", "cuda:0"], {"WORLD_SIZE": "2", "RANK": "1"}, "--device cuda:0"),
    (["--max_memory", "0=10GiB"], {}, "--max_memory"),
    (["--device_map", "everywhere"], {}, "--device_map 'everywhere'"),
    (["--device_map", "auto", "--device", "cpu"], {}, "drop --device cpu"),
    (["--device_map", "auto", "--max_memory", "gpu0:10"], {}, "DEVICE=SIZE"),
])
def test_bad_scale_out_flags_exit_2(argv, env, words, monkeypatch, capsys):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as e:
        run.main(["--method", "baseline", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_run_dir_refuses_another_run(shards, tiny_model_dir, capsys):
    with pytest.raises(SystemExit) as e:
        run.main(_flags(tiny_model_dir, "--num_shards", "2", "--shard_id", "0", "--run_dir", str(shards[0]),
                        "--latent_steps", "3"))
    assert e.value.code == 2
    assert "latent_steps: saved 1, given 3" in capsys.readouterr().err


@pytest.mark.parametrize("shards_, world", [(1, 1), (1, 3), (3, 1), (2, 3), (4, 2)])
def test_shards_and_processes_cover_each_item_once(shards_, world):
    items = list(range(17))
    taken = [i for s in range(shards_) for r in range(world)
             for i in Launch(rank=r, world=world, num_shards=shards_, shard_id=s).mine(
                 Launch(num_shards=shards_, shard_id=s).shard(items))]
    assert sorted(taken) == items
    assert Launch(rank=1, world=2).mine(items)[:3] == [1, 3, 5]  # interleaved, not blocks
