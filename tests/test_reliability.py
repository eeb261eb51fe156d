"""Reliability: a run directory belongs to one run at a time, damaged results files are read the one careful way,
--resume refuses flags that would change results, non-finite numbers and bad files end in one line, and a full disk
keeps every finished item and says how to continue."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import config
import run
import rundir
from rundir import RunDirError, read_results
from tests.conftest import ROOT, exit_2, run_argv

pytestmark = pytest.mark.usefixtures("one_thread")

REC = [json.dumps({"index": i, "correct": i % 2 == 0}) for i in range(4)]


def _cli(tiny_model_dir, *extra):
    return run_argv(tiny_model_dir, "--method", "latent_mas", "--device", "cpu", *extra, tokens=4, steps=1)


def _indices(run_dir: Path) -> list[int]:
    return [r["index"] for r in read_results(run_dir / "results.jsonl")]


# --- one results reader ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, indices, repaired", [
    (REC[0] + "\n\n" + REC[1] + "\n  \n" + REC[2] + "\n", [0, 1, 2], None),  # blank lines: skipped, kept
    (REC[0] + "\n" + REC[1], [0, 1], REC[0] + "\n" + REC[1] + "\n"),  # whole last line: gets its newline
    (REC[0] + "\n" + REC[1][:9], [0], REC[0] + "\n"),  # torn tail: cut
    (REC[0] + "\n\n" + REC[1] + "\n" + REC[2], [0, 1, 2], REC[0] + "\n\n" + REC[1] + "\n" + REC[2] + "\n"),
    ("", [], None),
])
def test_reader_repairs_only_the_tail(text, indices, repaired, tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(text)
    assert [r["index"] for r in read_results(path)] == indices
    assert path.read_text() == text  # reading never changes a file
    assert [r["index"] for r in read_results(path, repair=True)] == indices
    assert path.read_text() == (text if repaired is None else repaired)
    with open(path, "a") as f:  # what the next record of a resumed run does
        f.write(REC[3] + "\n")
    assert [r["index"] for r in read_results(path)] == [*indices, 3]


@pytest.mark.parametrize("bad, words", [
    ("garbage", "not JSON"),
    (REC[1] + REC[2], "not JSON"),  # two records glued together by an older writer
    ("[1, 2]", "JSON, but not a record"),
    ('{"index": "1"}', "JSON, but not a record"),
    (b"\xff\xfe\x00".decode("latin-1"), "not JSON"),
])
def test_reader_stops_at_a_damaged_line_and_changes_nothing(bad, words, tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes((REC[0] + "\n" + bad + "\n" + REC[3] + "\n" + REC[2][:5]).encode("latin-1"))
    before = path.read_bytes()
    for repair in (False, True):
        with pytest.raises(RunDirError, match=f"results.jsonl:2: damaged line \\({words}"):
            read_results(path, repair=repair)
    assert path.read_bytes() == before


def test_a_whole_last_line_that_is_not_a_record_is_an_error(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(REC[0] + "\n[3]")
    with pytest.raises(RunDirError, match=":2: damaged line"):
        read_results(path, repair=True)
    assert path.read_text() == REC[0] + "\n[3]"


# --- run directories: new names, one run at a time ---------------------------------------------------------------

def test_new_run_dirs_never_share_a_name(tmp_path):
    made = [rundir.new_run_dir(tmp_path / "runs", "same_name") for _ in range(3)]
    assert [p.name for p in made] == ["same_name", "same_name-2", "same_name-3"]


def test_two_runs_in_the_same_second_get_two_directories(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(config.RunConfig, "run_name", lambda self: "fixed_20250101-000000")
    for _ in range(2):
        assert run.main(_cli(tiny_model_dir, "--max_samples", "1", "--output_dir", str(tmp_path))) == 0
    dirs = sorted(p.name for p in tmp_path.iterdir())
    assert dirs == ["fixed_20250101-000000", "fixed_20250101-000000-2"]
    assert all(_indices(tmp_path / d) == [0] for d in dirs)


HOLDER = """
import pathlib, sys, time
sys.path.insert(0, {root!r})
import methods.latent_mas as lm, run
def stuck(*a, **kw):  # a run that holds its directory: started, config written, busy with its first batch
    pathlib.Path({flag!r}).touch()
    time.sleep(600)
lm.run_batch = stuck
run.main({argv!r})
"""


def _start_holder(argv: list[str], flag: Path) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    code = HOLDER.format(root=str(ROOT), flag=str(flag), argv=argv)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not flag.exists():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:] if proc.stderr else ""
        time.sleep(0.1)
    return proc


def test_a_busy_run_dir_is_refused_until_its_holder_dies(tiny_model_dir, tmp_path, capsys):
    """A second run (same --run_dir, or --resume) refuses, naming the holder; kill -9 of the holder frees it."""
    rd = tmp_path / "shared"
    holder = _start_holder(_cli(tiny_model_dir, "--run_dir", str(rd)), tmp_path / "busy")
    try:
        for argv in (_cli(tiny_model_dir, "--run_dir", str(rd)), ["--resume", str(rd)]):
            line = exit_2(argv, capsys)
            assert f"{rd} is in use by pid {holder.pid} on " in line and "started" in line, line
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert not (rd / "results.jsonl").read_text()  # the refused runs wrote nothing
    assert run.main(_cli(tiny_model_dir, "--run_dir", str(rd))) == 0  # the lock died with its process
    assert _indices(rd) == [0, 1, 2]


def test_two_processes_into_one_run_dir_write_each_item_once(tiny_model_dir, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    argv = [sys.executable, "run.py", *_cli(tiny_model_dir, "--run_dir", str(tmp_path / "shared"))]
    procs = [subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert 0 in [rc for rc, _ in outs]
    for rc, err in outs:
        assert "Traceback" not in err
        assert rc == 0 or (rc == 2 and "is in use by pid" in err.strip().splitlines()[-1]), err[-2000:]
    assert _indices(tmp_path / "shared") == [0, 1, 2]


def test_torchrun_into_a_busy_run_dir_refuses_in_every_process(tiny_model_dir, tmp_path):
    rd = tmp_path / "busy"
    rd.mkdir()
    lock = rundir.lock_run_dir(rd)  # this test process holds it
    try:
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "run.py", *_cli(tiny_model_dir, "--run_dir", str(rd))],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    finally:
        lock.close()
    assert proc.returncode != 0
    assert proc.stderr.count(f"is in use by pid {os.getpid()}") == 2, proc.stderr[-3000:]
    assert sorted(p.name for p in rd.iterdir()) == ["run.lock"]


# --- resume ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished")
    assert run.main(_cli(tiny_model_dir, "--output_dir", str(out))) == 0
    (rd,) = out.iterdir()
    return rd


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("run.lock"))
    return dst


def test_resume_over_blank_lines_and_a_last_line_without_newline(finished, tmp_path, capsys):
    rd = _copy(finished, tmp_path / "r")
    lines = (rd / "results.jsonl").read_text().splitlines()
    (rd / "results.jsonl").write_text(lines[0] + "\n\n" + lines[1])  # as if stopped after 2 of 3
    assert run.main(["--resume", str(rd)]) == 0
    assert "(2 done, 1 to go)" in capsys.readouterr().err
    now = (rd / "results.jsonl").read_text().splitlines()
    assert now[:3] == [lines[0], "", lines[1]] and _indices(rd) == [0, 1, 2]


@pytest.mark.parametrize("how", ["resume", "report", "merge"])
def test_a_damaged_middle_line_stops_every_reader_and_changes_nothing(how, finished, tmp_path, capsys):
    rd = _copy(finished, tmp_path / "r")
    lines = (rd / "results.jsonl").read_text().splitlines(keepends=True)
    (rd / "results.jsonl").write_text(lines[0] + "{oops\n" + lines[1])
    before = {p.name: p.read_bytes() for p in rd.iterdir()}
    where = f"{rd / 'results.jsonl'}:2: damaged line"
    if how == "resume":
        assert where in exit_2(["--resume", str(rd)], capsys)
    else:
        with pytest.raises(SystemExit) as e:
            run.main([how, str(rd), "--out", str(tmp_path / "out")])
        assert e.value.code == 2
        assert where in capsys.readouterr().err.strip().splitlines()[-1]
    assert {p.name: p.read_bytes() for p in rd.iterdir() if p.name != "run.lock"} == \
        {k: v for k, v in before.items() if k != "run.lock"}


@pytest.mark.parametrize("flags, named", [
    (["--max_new_tokens", "9"], "--max_new_tokens 9 (saved: 4)"),
    (["--temperature", "0.7"], "--temperature 0.7 (saved: 0.0)"),
    (["--task", "arc_easy"], "--task 'arc_easy' (saved: 'gsm8k')"),
    (["--latent_steps", "2", "--seed", "1"], "--latent_steps 2 (saved: 1), --seed 1 (saved: 42)"),
    (["--kv_policy", "knorm"], "--kv_policy 'knorm' (saved: 'none')"),
])
def test_resume_refuses_flags_that_change_results(flags, named, finished, capsys):
    before = (finished / "results.jsonl").read_bytes()
    line = exit_2(["--resume", str(finished), *flags], capsys)
    assert f"--resume {finished}: {named} would change the results" in line
    assert (finished / "results.jsonl").read_bytes() == before


def test_resume_takes_runtime_flags_and_repeated_saved_values(finished, tmp_path, capsys):
    rd = _copy(finished, tmp_path / "r")
    lines = (rd / "results.jsonl").read_text().splitlines(keepends=True)
    (rd / "results.jsonl").write_text(lines[0])
    assert run.main(["--resume", str(rd), "--generate_bs", "2", "--verbose", "--device", "cpu",
                     "--max_new_tokens", "4", "--output_dir", str(tmp_path / "ignored")]) == 0
    assert "Problem #1" in capsys.readouterr().out  # --verbose took effect
    assert (rd / "results.jsonl").read_text().splitlines(keepends=True)[0] == lines[0] and _indices(rd) == [0, 1, 2]


# --- flags, files and directories --------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, value", [
    ("--temperature", "nan"), ("--temperature", "inf"), ("--top_p", "nan"), ("--top_p", "-inf"),
    ("--kv_keep", "nan"), ("--kv_keep", "Infinity"),
])
def test_non_finite_numbers_are_refused(flag, value, capsys):
    line = exit_2(["--method", "latent_mas", "--kv_policy", "knorm", f"{flag}={value}"], capsys)
    assert flag in line and "not a finite number" in line


def test_strict_json_never_writes_nan():
    text = rundir.to_json({"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}})
    assert json.loads(text) == {"a": None, "b": [None, 1.5], "c": {"d": None}}


@pytest.fixture
def no_model(monkeypatch):
    """A run must fail before this: loading the model would mean the check came too late."""
    import models

    def refuse(*a, **kw):
        raise AssertionError("the model was loaded before the bad input was found")
    monkeypatch.setattr(models, "load_model", refuse)


def _read_only_dir(path: Path):
    """A folder nobody may write in: a read-only tmpfs (root ignores permission bits), else chmod."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o500)
        return lambda: path.chmod(0o700)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                      capture_output=True).returncode:
        pytest.skip("mount is not permitted here")
    return lambda: subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("case, words", [
    ("output_dir_is_a_file", "cannot create a run directory in"),
    ("output_dir_read_only", "cannot create a run directory in"),
    ("run_dir_is_a_file", "cannot create the run directory"),
    ("agents_binary", "not UTF-8 text"),
    ("agents_directory", "is not a file"),
    ("resume_config_not_json", "is not valid JSON"),
    ("resume_config_binary", "is not valid JSON"),
    ("resume_config_no_args", "has no 'args' object"),
    ("resume_not_a_directory", "config.json"),
    ("run_dir_config_not_json", "is not valid JSON"),
])
def test_bad_files_and_directories_end_in_one_line_before_the_model_loads(case, words, tiny_model_dir, tmp_path,
                                                                          no_model, capsys):
    bad, undo = tmp_path / "bad", None
    argv = _cli(tiny_model_dir, "--output_dir", str(tmp_path / "runs"))
    if case in ("output_dir_is_a_file", "run_dir_is_a_file", "resume_not_a_directory"):
        bad.write_text("x")
    elif case == "output_dir_read_only":
        undo = _read_only_dir(bad)
    elif case == "agents_binary":
        bad.write_bytes(bytes(range(256)))
    elif case == "agents_directory":
        bad.mkdir()
    else:
        bad.mkdir()
        content = {"resume_config_binary": b"\x89PNG\r\n\x1a\n\xff", "resume_config_no_args": b'{"data": {}}'}
        (bad / "config.json").write_bytes(content.get(case, b'{"args": {"method": '))
    extra = {"output_dir_is_a_file": ["--output_dir"], "output_dir_read_only": ["--output_dir"],
             "run_dir_is_a_file": ["--run_dir"], "agents_binary": ["--agents"], "agents_directory": ["--agents"],
             "run_dir_config_not_json": ["--run_dir"]}.get(case)
    try:
        line = exit_2([*argv, *extra, str(bad)] if extra else ["--resume", str(bad)], capsys)
    finally:
        if undo:
            undo()
    assert words in line and str(bad) in line, line
    assert not (tmp_path / "runs").exists()


def test_a_failed_start_leaves_no_directory(tmp_path, capsys):
    line = exit_2(["--method", "baseline", "--model_name", "no-such-alias", "--output_dir", str(tmp_path)], capsys)
    assert "unknown model" in line and not list(tmp_path.iterdir())


# --- a full disk -------------------------------------------------------------------------------------------------

class _DiskFillsAfter:
    """rundir.os as the results writer sees it: the write of record `n` stops half-way with ENOSPC."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, data):
        self.calls += 1
        if self.calls == self.n:
            return os.write(fd, data[: len(data) // 2])
        if self.calls > self.n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data)


def _check_disk_full(rd: Path, line: str, kept: int):
    assert "No space left on device" in line and f"python run.py --resume {rd}" in line, line
    assert _indices(rd) == list(range(kept))  # the finished items are on disk; the torn one is not counted
    assert not (rd / "summary.json").exists()


def test_disk_full_during_the_run_simulated(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rundir, "os", _DiskFillsAfter(2))
    line = exit_2(_cli(tiny_model_dir, "--output_dir", str(tmp_path)), capsys)
    (rd,) = tmp_path.iterdir()
    _check_disk_full(rd, line, kept=1)
    monkeypatch.undo()
    assert run.main(["--resume", str(rd)]) == 0
    assert [json.loads(x)["index"] for x in (rd / "results.jsonl").read_text().splitlines()] == [0, 1, 2]


def _fill(disk: Path) -> None:
    """Another file takes every free byte of `disk`."""
    with open(disk / "filler", "wb", buffering=0) as f:
        try:
            while f.write(b"\0" * 4096):
                pass
        except OSError:
            pass  # full


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mount is not permitted here")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_disk_full_during_the_run_on_a_real_small_disk(small_disk, tiny_model_dir, monkeypatch, capsys):
    """A real ENOSPC: the disk fills up (another file grows) while the second item runs."""
    import methods.latent_mas as lm

    real, calls = lm.run_batch, []

    def filling(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            _fill(small_disk)
        return [dict(r, pad="x" * 8192) for r in real(*a, **kw)]  # a record larger than any page left free

    monkeypatch.setattr(lm, "run_batch", filling)
    line = exit_2(_cli(tiny_model_dir, "--output_dir", str(small_disk / "runs")), capsys)
    (rd,) = (small_disk / "runs").iterdir()
    _check_disk_full(rd, line, kept=1)
    (small_disk / "filler").unlink()  # space freed: continue as the message says
    monkeypatch.setattr(lm, "run_batch", real)
    assert run.main(["--resume", str(rd)]) == 0
    assert _indices(rd) == [0, 1, 2] and json.loads((rd / "summary.json").read_text())["n"] == 3


def test_a_full_disk_at_the_start_leaves_no_directory(small_disk, tiny_model_dir, capsys):
    _fill(small_disk)
    line = exit_2(_cli(tiny_model_dir, "--output_dir", str(small_disk / "runs")), capsys)
    assert "config.json (No space left on device)" in line and "start the run again" in line
    assert not list((small_disk / "runs").iterdir())
