"""Experiment trackers (--log_with NAME[,NAME], --log_dir DIR) through accelerate's Tracker API, so that the nine
trackers it knows (registry.TRACKERS) work alike.

Per run (a single run, or one cell of a sweep): the settings as hyperparameters when it starts; per finished item,
as step = items done so far, the running accuracy, whether it was correct, its generated tokens, the judger's KV
tokens and bytes and its time; at the end the summary's numbers (step = items). A sweep's cells are one tracker run
each, grouped by the sweep's name (TensorBoard and DVCLive: DIR/SWEEP/CELL; Trackio, MLflow, W&B, SwanLab, Comet,
ClearML: the project or experiment SWEEP; Aim: the experiment SWEEP; Trackio and W&B also record it as the run's
group). DIR defaults to RUN_DIR/trackers for a run and
SWEEP_FOLDER/trackers for a sweep. Local stores need no network; the hosted ones (W&B, SwanLab, Comet) write
offline unless their API key is set.

Only the main process of a data-parallel launch logs, and only the items it ran itself (the summary covers all).
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from contextlib import redirect_stdout
from pathlib import Path

from errors import RunError
from registry import TRACKERS

DEFAULT_PROJECT = "latentmas-kv"  # the project of runs that belong to no sweep
REQUIREMENTS = "requirements-trackers.txt"


class TrackerError(RunError):
    """A tracker cannot be used (unknown, not installed, failed to start); the message names the fix."""


def parse_names(text: str) -> list[str]:
    """The tracker names of a --log_with value ("tensorboard,trackio"); unknown names are refused."""
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown or not names:
        raise TrackerError(f"unknown tracker {', '.join(unknown) or '(none given)'}; choose from "
                           f"{', '.join(TRACKERS)} (comma-separated)")
    return list(dict.fromkeys(names))


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def missing(names: list[str]) -> str | None:
    """One line naming what to install for the trackers whose package is absent, or None (nothing is imported)."""
    absent = [n for n in names if not _installed(TRACKERS[n].module)]
    if not absent:
        return None
    packages = " ".join(TRACKERS[n].package for n in absent)
    return (f"--log_with {','.join(absent)}: not installed; pip install {packages} (or pip install -r "
            f"{REQUIREMENTS} for tensorboard and trackio)")


def _offline(key: str) -> bool:
    return not os.environ.get(key)


LAUNCHER_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _accelerate_state() -> None:
    """accelerate's trackers write their debug lines through accelerate's logger, which refuses to work before its
    process state exists. The harness starts no torch.distributed group (each process of a data-parallel launch
    works alone and only the main one logs), so the state is made as for a single process: with the launcher's
    variables hidden, it cannot wait for the other ranks to join a group they never join."""
    from accelerate import PartialState

    if PartialState._shared_state:
        return
    saved = {k: os.environ.pop(k) for k in LAUNCHER_VARIABLES if k in os.environ}
    try:
        PartialState()
    finally:
        os.environ.update(saved)


def _tracker(name: str, root: Path, run: str, group: str | None):
    """accelerate's tracker object for `name`, its local store under `root`."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    cls = LOGGER_TYPE_TO_CLASS[name]
    project = group or DEFAULT_PROJECT
    per_run = root / group if group else root  # trackers that write one folder per run: DIR/[SWEEP/]RUN
    if name == "tensorboard":
        return cls(run, per_run)
    if name == "trackio":
        # trackio fixes its folder when first imported: point it at DIR unless the user chose one
        os.environ.setdefault("TRACKIO_DIR", str(root))
        return cls(project, name=run, group=group)
    if name == "mlflow":
        if "MLFLOW_TRACKING_URI" not in os.environ:
            os.environ["MLFLOW_TRACKING_URI"] = (root / "mlruns").resolve().as_uri()
        return cls(experiment_name=project, logging_dir=str(root / "mlruns"), run_name=run)
    if name == "aim":
        return cls(run, str(root), experiment=project)
    if name == "dvclive":
        return cls(dir=str(per_run / run), save_dvc_exp=False)
    if name == "wandb":
        mode = os.environ.get("WANDB_MODE") or ("offline" if _offline("WANDB_API_KEY") else "online")
        return cls(project, name=run, group=group, dir=str(root), mode=mode)
    if name == "swanlab":
        mode = "offline" if _offline("SWANLAB_API_KEY") else "cloud"
        return cls(project, experiment_name=run, logdir=str(root), mode=mode)
    if name == "comet_ml":
        return cls(project, online=not _offline("COMET_API_KEY"))
    return cls(run_name=run, project_name=project)  # clearml


def _scalar(value):
    """A hyperparameter every tracker takes: numbers, strings and booleans as they are, anything else as JSON."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, default=str)


class Tracking:
    """The trackers of one run: `item` after each finished item, `summary` at the end, `close` always."""

    def __init__(self, names: list[str], root: Path, run: str, group: str | None, settings: dict):
        self.root, self.trackers, self.closed = root, [], False
        root.mkdir(parents=True, exist_ok=True)
        _accelerate_state()
        for name in names:
            try:
                t = _tracker(name, root, run, group)
                t.main_process_only = False  # the caller logs on the main process only
                with redirect_stdout(sys.stderr):  # stdout carries the run's summary line alone
                    t.start()
                    t.store_init_configuration({k: _scalar(v) for k, v in settings.items()})
            except Exception as e:  # a tracker's own failure (its server, its files): one line, the run not started
                self.close()
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise TrackerError(f"--log_with {name}: could not start ({type(e).__name__}: {first})") from None
            self.trackers.append(t)

    def log(self, values: dict, step: int) -> None:
        """Numbers only (a missing or non-finite value is left out)."""
        values = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                  and math.isfinite(v)}
        for t in self.trackers:
            try:
                with redirect_stdout(sys.stderr):
                    t.log(values, step=step)
            except Exception as e:  # the items are on disk already; say which tracker failed, in one line
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise TrackerError(f"--log_with {t.name}: logging failed ({type(e).__name__}: {first})") from None

    def item(self, rec: dict, done: dict) -> None:
        """One finished item; `done` holds every record so far (this one included)."""
        judger = rec["agents"][-1] if rec.get("agents") else {}
        graded = [r for r in done.values() if r.get("correct") is not None]
        self.log({"item/accuracy": sum(bool(r["correct"]) for r in graded) / max(len(graded), 1),
                  "item/correct": int(bool(rec.get("correct"))),
                  "item/generated_tokens": rec.get("generated_tokens"),
                  "item/kv_tokens_judger": judger.get("kv_tokens_in"),
                  "item/kv_bytes_judger": judger.get("kv_bytes_in"), "item/time_s": rec.get("time_s")},
                 step=len(done))

    def summary(self, summary: dict) -> None:
        flat = {f"summary/{k}": v for k, v in summary.items()}
        ci = summary.get("accuracy_ci95") or [None, None]
        flat.update({"summary/accuracy_ci95_low": ci[0], "summary/accuracy_ci95_high": ci[1]})
        self.log(flat, step=summary.get("n") or 0)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for t in self.trackers:
            try:
                with redirect_stdout(sys.stderr):
                    if t.name == "trackio":  # its module-level finish also forgets the run (else atexit ends it again)
                        import trackio

                        trackio.finish()
                    else:
                        t.finish()
            except Exception:  # noqa: S110 - closing is best effort: what was logged is on disk already
                pass


def open_tracking(cfg, run_dir: Path, run: str, group: str | None = None) -> Tracking | None:
    """The run's trackers (None without --log_with). `group`: the sweep's name, for a sweep's cell."""
    if not cfg.output.log_with:
        return None
    names = parse_names(cfg.output.log_with)
    problem = missing(names)
    if problem:
        raise TrackerError(problem)
    default = run_dir.parent / "trackers" if group else run_dir / "trackers"
    root = Path(cfg.output.log_dir) if cfg.output.log_dir else default
    return Tracking(names, root, run, group, cfg.flat())
