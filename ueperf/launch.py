"""Where a grid's cells run: the one home of launching them.

Three launchers run the same cells (:class:`ueperf.grid.Cell`) with the same code, so the numbers
do not depend on the launcher:

- ``inline`` (the default): one after another in this process;
- ``local``: a pool of ``--workers`` processes on this machine (spawned, so each has its own CUDA
  context). Each worker is pinned to its own ``--gpus-per-cell`` devices with
  ``CUDA_VISIBLE_DEVICES`` (a slice of the devices this process sees; more workers than that share
  them in turn), or on a machine without GPUs gets ``cores // workers`` CPU threads;
- ``slurm``: jobs on a SLURM cluster through submitit (``pip install 'ueperf[slurm]'``): one job
  that prepares the clean store and the prior, an array of protection jobs after it, and per
  (protection, seed) an array of its cells with ``--dependency=afterok:<its protection job>``.
  ``OUT/slurm/jobs.json`` maps cells to jobs and logs (``OUT/slurm/<job id>/``); a job that times out
  or is preempted is requeued by submitit and resumes its run folder.

A protected store is made once, before the cells that train on it (locally: a task of the pool;
on SLURM: a job). A cell of ``--gpus-per-cell K`` > 1 devices runs as ``torchrun --standalone
--nproc_per_node K -m ueperf.train`` with the cell's exact config (DDP; gloo on CPU).

A finished cell is never run again: every launcher skips cells whose run folder holds a summary,
an interrupted cell resumes its run folder, so rerunning a killed sweep finishes the remaining
cells only. Every start and end of a cell is logged to ``OUT/events/<cell>.jsonl`` with its
launcher, host, process and timings (launch, store open, training).

``python -m ueperf.launch deepspeed-sets FILE`` turns a DeepSpeed JSON config
(``launch/deepspeed/zero*.json``) into the ``--set`` values the engine takes (see launch/README.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .errors import ConfigError, UeperfError
from .grid import Cell, Grid, GridRunner

LAUNCHERS = ("inline", "local", "slurm")
CLUSTERS = ("slurm", "local")  # submitit executors: a SLURM cluster, or its local stand-in (tests, dry runs)
SUBMITIT_HINT = "pip install 'ueperf[slurm]'  (or: pip install submitit)"
# SLURM states of a job that is still going to run: a rerun leaves its cell alone
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
                 "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "PREEMPTED"}


# ───────────────────────────────────────────── options ──
@dataclass
class SlurmOptions:
    """submitit/SLURM parameters of ``--launcher slurm`` (every job of the sweep gets them)."""
    partition: str = ""
    time: str = "24:00:00"             # per job: minutes, HH:MM:SS or D-HH:MM:SS (sbatch's formats)
    gpus_per_node: Optional[int] = None  # per cell job (None: --gpus-per-cell); protection jobs take at most 1
    cpus_per_task: Optional[int] = None
    array_parallelism: int = 256       # at most this many tasks of one array at once (sbatch --array=...%N)
    opts: List[str] = field(default_factory=list)   # KEY=VALUE → #SBATCH --KEY=VALUE
    setup: List[str] = field(default_factory=list)  # shell lines before the job's command
    cluster: str = "slurm"             # slurm | local (submitit's local executor: same jobs, this machine)
    wait: bool = False                 # stay until every job ended (always, for cluster=local)

    def minutes(self) -> int:
        return slurm_minutes(self.time)

    def additional(self) -> Dict[str, str]:
        out = {"kill-on-invalid-dep": "yes"}  # a cell whose protection failed is cancelled, not left pending
        for kv in self.opts:
            k, sep, v = kv.partition("=")
            if not sep or not k.strip():
                raise ConfigError(f"--slurm-opt {kv!r}: expected KEY=VALUE (an sbatch option, e.g. account=myproj, "
                                  f"qos=high, mem=64G, constraint=h100)")
            out[k.strip().lstrip("-")] = v.strip()
        return out


@dataclass
class Launch:
    launcher: str = "inline"
    workers: int = 0                   # local: 0 = one per --gpus-per-cell devices (1 without GPUs)
    gpus_per_cell: int = 1             # > 1: each cell runs under torchrun on that many devices (CPU: processes)
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    dry_run: bool = False


def slurm_minutes(spec: str) -> int:
    """sbatch ``--time`` formats (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``) → whole minutes."""
    s = str(spec).strip()
    try:
        days, _, rest = s.rpartition("-") if "-" in s else ("0", "", s)
        parts = [int(p) for p in rest.split(":")]
        d = int(days or 0)
        if "-" in s:  # D-H, D-H:M, D-H:M:S
            h, m, sec = (parts + [0, 0])[:3]
        elif len(parts) == 3:
            h, m, sec = parts
        else:         # M or M:S
            h, (m, sec) = 0, (parts + [0])[:2]
        if min(d, h, m, sec) < 0 or len(parts) > 3:
            raise ValueError
    except ValueError:
        raise ConfigError(f"--slurm-time {spec!r}: expected minutes, HH:MM:SS or D-HH:MM:SS (sbatch --time)") from None
    total = d * 1440 + h * 60 + m + (1 if sec > 0 else 0)
    if total <= 0:
        raise ConfigError(f"--slurm-time {spec!r}: must be more than 0")
    return total


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The launcher options of a CLI that runs a grid (``python -m ueperf.sweep``)."""
    g = p.add_argument_group("where the cells run (ueperf.launch)")
    g.add_argument("--launcher", choices=LAUNCHERS, default=None,
                   help="inline: one cell after another in this process (default); local: --workers processes on "
                        "this machine, one per device; slurm: jobs on a SLURM cluster through submitit")
    g.add_argument("--workers", type=int, default=0, metavar="N",
                   help="local: cells at once (default: visible GPUs // --gpus-per-cell; 1 without GPUs); "
                        "implies --launcher local")
    g.add_argument("--gpus-per-cell", type=int, default=1, metavar="K",
                   help="devices per cell; K > 1 runs each cell as `torchrun --standalone --nproc_per_node K -m "
                        "ueperf.train` (DDP; on CPU K gloo processes)")
    g.add_argument("--dry-run", action="store_true",
                   help="check every cell's config, print what would run (cells, protections, jobs) and exit")
    s = p.add_argument_group("--launcher slurm (submitit)")
    s.add_argument("--slurm-partition", default=None, help="sbatch --partition")
    s.add_argument("--slurm-time", default=None, metavar="TIME",
                   help="time limit of each job: minutes, HH:MM:SS or D-HH:MM:SS (default 24:00:00); a cell that "
                        "runs out is requeued and resumes")
    s.add_argument("--slurm-gpus-per-node", type=int, default=None, metavar="N",
                   help="GPUs of each cell job (default --gpus-per-cell; 0 on a CPU cluster)")
    s.add_argument("--slurm-cpus-per-task", type=int, default=None, metavar="N", help="sbatch --cpus-per-task")
    s.add_argument("--slurm-array-parallelism", type=int, default=None, metavar="N",
                   help="at most N tasks of each job array at once (sbatch --array=...%%N; one array of cells per "
                        "protection × seed; default 256)")
    s.add_argument("--slurm-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. account=myproj, qos=high, mem=64G, constraint=h100 (repeatable)")
    s.add_argument("--slurm-setup", action="append", default=[], metavar="CMD",
                   help="shell line run before each job, e.g. 'source ~/venv/bin/activate' (repeatable)")
    s.add_argument("--slurm-wait", action="store_true",
                   help="stay until every job ended, then write the tables (default: submit and return; rerun the "
                        "same command to collect finished cells and resubmit the failed ones)")
    s.add_argument("--slurm-cluster", choices=CLUSTERS, default="slurm",
                   help="local: the same jobs through submitit's local executor on this machine (tests)")


def from_args(args: argparse.Namespace) -> Launch:
    launcher = args.launcher or ("local" if args.workers else "inline")
    given = {k: v for k, v in (("--slurm-partition", args.slurm_partition), ("--slurm-time", args.slurm_time),
                               ("--slurm-gpus-per-node", args.slurm_gpus_per_node),
                               ("--slurm-cpus-per-task", args.slurm_cpus_per_task),
                               ("--slurm-array-parallelism", args.slurm_array_parallelism),
                               ("--slurm-opt", args.slurm_opt or None), ("--slurm-setup", args.slurm_setup or None),
                               ("--slurm-wait", args.slurm_wait or None),
                               ("--slurm-cluster", None if args.slurm_cluster == "slurm" else args.slurm_cluster))
             if v is not None}
    if given and launcher != "slurm":
        raise ConfigError(f"{', '.join(given)}: only with --launcher slurm (this sweep runs --launcher {launcher})")
    if args.workers and launcher != "local":
        raise ConfigError(f"--workers {args.workers}: only with --launcher local (use --slurm-array-parallelism "
                          f"to limit a SLURM sweep)" if launcher == "slurm" else
                          f"--workers {args.workers}: only with --launcher local")
    sl = SlurmOptions(partition=args.slurm_partition or "", time=args.slurm_time or "24:00:00",
                      gpus_per_node=args.slurm_gpus_per_node, cpus_per_task=args.slurm_cpus_per_task,
                      array_parallelism=256 if args.slurm_array_parallelism is None else args.slurm_array_parallelism,
                      opts=list(args.slurm_opt), setup=list(args.slurm_setup), cluster=args.slurm_cluster,
                      wait=bool(args.slurm_wait))
    return Launch(launcher=launcher, workers=args.workers, gpus_per_cell=args.gpus_per_cell, slurm=sl,
                  dry_run=bool(getattr(args, "dry_run", False)))


# ───────────────────────────────────────────── devices ──
def visible_devices() -> List[str]:
    """The CUDA devices this process may hand out, as ``CUDA_VISIBLE_DEVICES`` entries (its own
    list when set, so a worker gets a slice of what the user gave this process)."""
    try:
        import torch
        n = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no CUDA runtime: no devices
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None and env.strip():
        return [d.strip() for d in env.split(",") if d.strip()][:n]
    return [str(i) for i in range(n)]


def _cpus() -> int:
    from .parallel import usable_cpus
    return usable_cpus()


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when its parent dies (a killed sweep takes its workers and their
    torchrun along; the run folders' locks go with them and a rerun resumes)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def device_slots(devices: Sequence[str], workers: int, k: int) -> List[List[str]]:
    """The devices of each of ``workers`` workers, ``k`` each, in turn; more workers than
    ``len(devices) // k`` share devices (small models: several cells per GPU)."""
    n = len(devices)
    return [[devices[(i * k + j) % n] for j in range(k)] for i in range(workers)] if n else []


def _worker_init(counter, slots: List[List[str]], threads: int) -> None:
    """A local worker: its own slice of devices (``slots[i]``) or ``threads`` CPU threads."""
    _die_with_parent()
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if slots:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(slots[index % len(slots)])
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["UEPERF_WORKER"] = str(index)
    import torch
    torch.set_num_threads(threads)


# ───────────────────────────────────────────── events ──
def events_path(out: Path, cell: Cell) -> Path:
    return Path(out) / "events" / f"{cell.name}.jsonl"


def _event(out: Path, cell: Cell, event: str, **fields: Any) -> None:
    """Append one line to the cell's event log (one process runs a cell at a time: its run folder's lock)."""
    p = events_path(out, cell)
    p.parent.mkdir(parents=True, exist_ok=True)
    line = {"event": event, "cell": cell.name, "t": time.time(), "host": socket.gethostname(), "pid": os.getpid(),
            **{k: v for k, v in fields.items() if v is not None}}
    with open(p, "a") as f:
        f.write(json.dumps(line) + "\n")


def read_events(out: Path) -> Dict[str, List[Dict[str, Any]]]:
    """{cell name: [event, ...]} of a grid's output folder."""
    d = Path(out) / "events"
    res: Dict[str, List[Dict[str, Any]]] = {}
    for p in sorted(d.glob("*.jsonl")) if d.is_dir() else []:
        res[p.stem] = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return res


def _job_env() -> Dict[str, Any]:
    """The submitit job this process runs in (id, and its log), when it is one."""
    if "SUBMITIT_EXECUTOR" not in os.environ and "SUBMITIT_FOLDER" not in os.environ:
        return {}
    try:
        import submitit
        env = submitit.JobEnvironment()
        return {"job_id": str(env.job_id), "log": str(env.paths.stdout)}
    except Exception:  # noqa: BLE001 - only for the event log
        return {}


# ───────────────────────────────────────────── one cell ──
def _quiet(grid: Grid) -> GridRunner:
    return GridRunner(dataclasses.replace(grid, progress=False))


class CellTask:
    """One cell where it is called: a worker process, a submitit job or this process. In-process
    on one device, or under torchrun on ``gpus`` devices. Picklable; submitit requeues it after a
    timeout or a preemption (:meth:`checkpoint`) and it resumes its run folder."""

    def __init__(self, grid: Grid, cell: Cell, *, gpus: int = 1, launcher: str = "inline",
                 queued: Optional[float] = None):
        self.grid, self.cell, self.gpus, self.launcher, self.queued = grid, cell, int(gpus), launcher, queued

    def __call__(self) -> Dict[str, Any]:
        import torch  # noqa: F401  (a fresh process: its imports count as launch, as in a pool worker's start)
        t_start = time.time()
        return self.run(_quiet(self.grid), t_start)

    def run(self, runner: GridRunner, t_start: Optional[float] = None) -> Dict[str, Any]:
        t_start = time.time() if t_start is None else t_start
        cell = self.cell
        if runner.summary(cell) is not None:      # finished: reused (after its config check)
            return runner.run_cell(cell)
        _event(runner.g.out, cell, "start", launcher=self.launcher, gpus=self.gpus, queued=self.queued,
               started=t_start, worker=os.environ.get("UEPERF_WORKER"), **_job_env())
        try:
            t = time.perf_counter()
            store = runner.store(cell.row, cell.seed)
            store_s = time.perf_counter() - t
            t = time.perf_counter()
            if self.gpus > 1:
                summary = run_torchrun(runner, cell, str(store.path), self.gpus)
            else:
                summary = runner.run_cell(cell)
            run_s = time.perf_counter() - t
        except BaseException as e:
            _event(runner.g.out, cell, "failed", error=f"{type(e).__name__}: {e}"[:2000])
            raise
        _event(runner.g.out, cell, "done", store_s=round(store_s, 4), run_s=round(run_s, 4),
               train_s=summary.get("total_time_s"), final_test_acc=summary.get("final_test_acc"))
        return summary

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit: requeue the same cell (it resumes its run folder from the last epoch)."""
        from submitit.helpers import DelayedSubmission
        return DelayedSubmission(self, *args, **kwargs)


class ProtectTask:
    """Make (or reuse) the protected store of (row, seed) in a worker or a job."""

    def __init__(self, grid: Grid, row: str, seed: int):
        self.grid, self.row, self.seed = grid, row, int(seed)

    def __call__(self) -> Dict[str, Any]:
        t = time.perf_counter()
        store = _quiet(self.grid).store(self.row, self.seed)
        return {"path": str(store.path), "seconds": time.perf_counter() - t}

    def checkpoint(self, *args: Any, **kwargs: Any):
        from submitit.helpers import DelayedSubmission
        return DelayedSubmission(self, *args, **kwargs)


class PrepareTask:
    """The clean store and the prior (when a paradigm needs one), before any protection or cell."""

    def __init__(self, grid: Grid):
        self.grid = grid

    def __call__(self) -> Dict[str, Any]:
        runner = _quiet(self.grid)
        clean = runner.clean()
        prior = runner.prior() if any(p != "fs" for p in self.grid.paradigms) else None
        return {"clean": str(clean.path), "prior": str(prior) if prior else ""}

    def checkpoint(self, *args: Any, **kwargs: Any):
        from submitit.helpers import DelayedSubmission
        return DelayedSubmission(self, *args, **kwargs)


# ───────────────────────────────────────────── torchrun cells ──
def train_args(runner: GridRunner, cell: Cell, store_path: str) -> List[str]:
    """``python -m ueperf.train`` arguments that build exactly ``runner.cell_config(cell, store_path)``."""
    g = runner.g
    args = ["--recipe", g.recipe, "--countermeasure", cell.countermeasure, "--paradigm", cell.paradigm]
    for s in runner.cell_sets(cell, store_path):
        args += ["--set", "train.progress=false" if s.startswith("train.progress=") else s]
    return args


def torchrun_command(runner: GridRunner, cell: Cell, store_path: str, nproc: int, resume: bool = False) -> List[str]:
    """torchrun (``python -m torch.distributed.run``, the same program) on ``nproc`` local processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(nproc)}",
            "-m", "ueperf.train", *train_args(runner, cell, store_path), *(["--resume"] if resume else [])]


def run_torchrun(runner: GridRunner, cell: Cell, store_path: str, nproc: int) -> Dict[str, Any]:
    """Run a cell under torchrun (its output in ``OUT/logs/<cell>.log``) and return its summary."""
    import torch
    resume = (runner.run_dir(cell) / "config.json").exists()
    cmd = torchrun_command(runner, cell, store_path, nproc, resume=resume)
    log = runner.g.out / "logs" / f"{cell.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, torch.get_num_threads() // nproc)))
    t0 = time.time()
    with open(log, "ab") as f:
        f.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent).returncode
    summary = runner.summary(cell)
    done_now = summary is not None and (runner.run_dir(cell) / "summary.json").stat().st_mtime >= t0 - 1
    if rc != 0 and done_now:
        # every epoch ran and rank 0 wrote the summary: a rank that failed in its teardown afterwards
        # (gloo can abort at exit) does not change the result; said in the log and on screen
        note = f"torchrun exited with status {rc} after the run finished (summary written); see {log}"
        with open(log, "a") as f:
            f.write(f"# ueperf.launch: {note}\n")
        print(f"warning: cell {cell.name}: {note}", file=sys.stderr, flush=True)
    elif rc != 0 or summary is None:
        tail = "\n    ".join(log.read_text(errors="replace").splitlines()[-12:])
        raise UeperfError(f"cell {cell.name}: torchrun exited with status {rc}; its output is in {log}:\n    {tail}")
    return summary


# ───────────────────────────────────────────── checks ──
def check(lc: Launch, runner: GridRunner) -> None:
    """Launcher options against the grid and this machine, before any work."""
    if lc.launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher {lc.launcher!r}: expected one of {', '.join(LAUNCHERS)}")
    if lc.workers < 0:
        raise ConfigError(f"--workers {lc.workers}: must be >= 1 (or 0 for one per device)")
    k = lc.gpus_per_cell
    if k < 1:
        raise ConfigError(f"--gpus-per-cell {k}: must be >= 1")
    if k > 1:
        for cell in runner.g.cells():
            cfg = runner.cell_config(cell, store_path="<store>", prior="<prior>")
            if cfg.parallel.backend == "none":
                raise ConfigError(f"--gpus-per-cell {k} runs each cell under torchrun (DDP): drop "
                                  f"--set parallel.backend=none (or use ddp / deepspeed)")
            if cfg.train.batch_size % k:
                raise ConfigError(f"--gpus-per-cell {k}: train.batch_size={cfg.train.batch_size} (the global batch) "
                                  f"is not divisible by {k} processes; use a multiple of {k}")
    if lc.launcher in ("inline", "local"):
        devices = visible_devices()
        if devices and k > len(devices):
            raise ConfigError(f"--gpus-per-cell {k}: this process sees {len(devices)} GPUs ({', '.join(devices)})")
    if lc.launcher == "slurm":
        sl = lc.slurm
        sl.minutes()
        sl.additional()
        if sl.array_parallelism < 1:
            raise ConfigError(f"--slurm-array-parallelism {sl.array_parallelism}: must be >= 1")
        for name, v in (("--slurm-gpus-per-node", sl.gpus_per_node), ("--slurm-cpus-per-task", sl.cpus_per_task)):
            if v is not None and v < 0:
                raise ConfigError(f"{name} {v}: must be >= 0")
        if sl.cluster not in CLUSTERS:
            raise ConfigError(f"--slurm-cluster {sl.cluster!r}: expected one of {', '.join(CLUSTERS)}")
        if not lc.dry_run:
            _submitit()
            if sl.cluster == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
                raise ConfigError("--launcher slurm: no sbatch/srun on this machine's PATH; run the sweep on a SLURM "
                                  "login node (--slurm-cluster local runs the same jobs here, for a try)")


def _submitit():
    try:
        import submitit
    except ImportError:
        raise ConfigError(f"--launcher slurm needs submitit: {SUBMITIT_HINT}") from None
    return submitit


# ───────────────────────────────────────────── running ──
Echo = Callable[[str], None]
After = Optional[Callable[[Cell, Dict[str, Any]], None]]


def _echo(runner: GridRunner) -> Echo:
    def echo(msg: str) -> None:
        if runner.g.progress:
            print(msg, file=sys.stderr, flush=True)
    return echo


def _groups(cells: Sequence[Cell]) -> Dict[Tuple[str, int], List[Cell]]:
    out: Dict[Tuple[str, int], List[Cell]] = {}
    for c in cells:
        out.setdefault((c.row, c.seed), []).append(c)
    return out


def _check_finished(runner: GridRunner, cells: Sequence[Cell]) -> None:
    """Finished cells against this grid's config (their store path as saved: the full check,
    store included, runs when a cell is reused in-process)."""
    for c in cells:
        p = runner.run_dir(c) / "config.json"
        if runner.summary(c) is not None and p.is_file():
            saved = json.loads(p.read_text())["config"]
            runner.finished(c, runner.cell_config(c, saved["data"]["dataset"], prior=saved["model"]["pretrained"]
                                                  if c.paradigm != "fs" else None))


def run_cells(runner: GridRunner, lc: Optional[Launch] = None, cells: Optional[Sequence[Cell]] = None,
              after: After = None) -> Dict[str, Any]:
    """Run ``cells`` (default: all of the grid) with launcher ``lc``, calling ``after(cell, summary)``
    in this process as each one finishes. Returns counts: ``cells``, ``finished`` (before),
    ``ran``, and for SLURM ``submitted``, ``active`` (still queued or running from an earlier
    submission). Failed cells raise a :class:`UeperfError` at the end, naming them and their logs."""
    lc = lc or Launch()
    cells = list(runner.g.cells() if cells is None else cells)
    echo = _echo(runner)
    if lc.launcher == "inline":
        return _inline(runner, cells, lc, after, echo)
    _check_finished(runner, cells)
    todo = [c for c in cells if runner.summary(c) is None]
    res: Dict[str, Any] = {"cells": len(cells), "finished": len(cells) - len(todo), "ran": 0}
    echo(f"{len(cells)} cells: {res['finished']} finished, {len(todo)} to run ({lc.launcher} launcher)")
    if not todo:
        return res
    if lc.launcher == "local":
        res["ran"] = _local(runner, todo, lc, after, echo)
    elif lc.launcher == "slurm":
        res.update(_slurm(runner, todo, lc, after, echo))
    else:
        raise ConfigError(f"--launcher {lc.launcher!r}: expected one of {', '.join(LAUNCHERS)}")
    return res


def _inline(runner: GridRunner, cells: List[Cell], lc: Launch, after: After, echo: Echo) -> Dict[str, Any]:
    g = runner.g
    finished = sum(runner.summary(c) is not None for c in cells)
    ran = 0
    for cell in cells:
        if runner.summary(cell) is None:
            echo(f"── {cell.row} × {g.column(cell)} (seed {cell.seed})")
            ran += 1
        s = CellTask(g, cell, gpus=lc.gpus_per_cell, launcher="inline", queued=time.time()).run(runner)
        if after is not None:
            after(cell, s)
    return {"cells": len(cells), "finished": finished, "ran": ran}


def _failure(failed: List[str], total: int, where: str) -> UeperfError:
    return UeperfError(f"{len(failed)} of {total} cells failed (rerun the same command to retry them; {where}):\n  "
                       + "\n  ".join(failed))


def _local(runner: GridRunner, todo: List[Cell], lc: Launch, after: After, echo: Echo) -> int:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    g, k = runner.g, lc.gpus_per_cell
    devices = visible_devices()
    workers = lc.workers or (max(1, len(devices) // k) if devices else 1)
    slots = device_slots(devices, workers, k)
    threads = max(1, _cpus() // workers)
    echo(f"   {workers} workers × " + (f"GPUs {' | '.join(','.join(s) for s in slots)}" if slots
                                       else f"{threads} CPU threads") + (f", torchrun × {k} per cell" if k > 1 else ""))
    runner.clean()                      # here, once: every worker opens it
    if runner.prior() is not None:      # built here when missing: give its device memory back to the workers
        import torch
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    groups = _groups(todo)
    ctx = mp.get_context("spawn")
    counter = ctx.Value("i", 0)
    failed: List[str] = []
    ran = 0
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                               initargs=(counter, slots, threads))
    pending: Dict[Any, Tuple[str, Any]] = {}

    def submit_cells(cells: List[Cell]) -> None:
        for c in cells:
            pending[pool.submit(CellTask(g, c, gpus=k, launcher="local", queued=time.time()))] = ("cell", c)

    try:
        for (row, seed) in groups:      # the protections first: they gate their cells
            if g.row(row).method:
                pending[pool.submit(ProtectTask(g, row, seed))] = ("protect", (row, seed))
        for (row, seed), cells in groups.items():
            if not g.row(row).method:
                submit_cells(cells)
        while pending:
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in done:
                kind, what = pending.pop(fut)
                try:
                    r = fut.result()
                except Exception as e:  # noqa: BLE001 - reported with the cell, the others go on
                    if kind == "protect":
                        failed += [f"{c.name}: its protection {what[0]} (seed {what[1]}) failed: {type(e).__name__}: {e}"
                                   for c in groups[what]]
                    else:
                        failed.append(f"{what.name}: {type(e).__name__}: {e}")
                    continue
                if kind == "protect":
                    runner.gen_time[f"{what[0]} s{what[1]}"] = r["seconds"]
                    submit_cells(groups[what])
                    continue
                ran += 1
                echo(f"── done {what.row} × {g.column(what)} (seed {what.seed})")
                if after is not None:
                    after(what, r)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    if failed:
        raise _failure(failed, len(todo), f"events in {g.out / 'events'}")
    return ran


# ───────────────────────────────────────────── SLURM (submitit) ──
def _book_path(g: Grid) -> Path:
    return Path(g.out).absolute() / "slurm" / "jobs.json"


def _read_book(g: Grid) -> Dict[str, Any]:
    p = _book_path(g)
    return json.loads(p.read_text()) if p.is_file() else {"prepare": {}, "protections": {}, "cells": {}}


def _write_book(g: Grid, book: Dict[str, Any]) -> None:
    from .files import write_json_atomic
    p = _book_path(g)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(p, book)


def slurm_states(job_ids: Sequence[str]) -> Dict[str, str]:
    """SLURM states of ``job_ids`` (one sacct call through submitit's watcher)."""
    if not job_ids:
        return {}
    from submitit.slurm.slurm import SlurmJob
    w = SlurmJob.watcher
    for j in job_ids:
        w.register_job(str(j))
    w.update()
    return {j: (w.get_state(str(j), mode="cache") or "UNKNOWN").split()[0].upper() for j in job_ids}


def job_parameters(lc: Launch, g: Grid, stage: str) -> Dict[str, Any]:
    """submitit AutoExecutor parameters of a stage (``prepare``, ``protect``, ``cells``)."""
    sl = lc.slurm
    gpus = lc.gpus_per_cell if sl.gpus_per_node is None else sl.gpus_per_node
    if stage != "cells":
        gpus = min(gpus, 1)             # the clean store, the prior and a protection use one device
    p: Dict[str, Any] = {"name": f"ueperf-{Path(g.out).name}-{stage}", "timeout_min": sl.minutes(),
                         "gpus_per_node": int(gpus), "nodes": 1, "tasks_per_node": 1,
                         "slurm_array_parallelism": sl.array_parallelism,
                         "slurm_additional_parameters": sl.additional()}
    if sl.partition:
        p["slurm_partition"] = sl.partition
    if sl.cpus_per_task:
        p["cpus_per_task"] = int(sl.cpus_per_task)
    if sl.setup:
        p["slurm_setup"] = list(sl.setup)
    return p


def _slurm(runner: GridRunner, todo: List[Cell], lc: Launch, after: After, echo: Echo) -> Dict[str, Any]:
    submitit = _submitit()
    g = dataclasses.replace(runner.g, out=Path(runner.g.out).absolute())  # jobs may start elsewhere
    sl = lc.slurm
    native = sl.cluster == "slurm"      # SLURM orders the jobs itself (--dependency); locally: wait on them
    book = _read_book(g)
    active: List[Cell] = []
    if native:                          # cells of an earlier submission that are still queued or running stay
        known = {c.name: book["cells"][c.name]["job"] for c in todo if c.name in book["cells"]}
        states = slurm_states(sorted(set(known.values())))
        active = [c for c in todo if c.name in known and states.get(known[c.name]) in ACTIVE_STATES]
        if active:
            echo(f"   {len(active)} cells are still queued or running from an earlier submission: left alone")
    todo = [c for c in todo if c not in active]
    if not todo:
        return {"submitted": 0, "active": len(active)}
    folder = Path(g.out) / "slurm" / "%j"
    ex = submitit.AutoExecutor(folder=folder, cluster=sl.cluster)
    groups = _groups(todo)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")

    def params(stage: str, dependency: Optional[str] = None) -> None:
        p = job_parameters(lc, g, stage)
        if native and dependency:
            p["slurm_dependency"] = dependency
        ex.update_parameters(**p)

    params("prepare")
    prep = ex.submit(PrepareTask(g))
    book["prepare"] = {"job": prep.job_id, "log": str(prep.paths.stdout), "submitted": stamp}
    echo(f"   prepare (clean store{', prior' if any(p != 'fs' for p in g.paradigms) else ''}): job {prep.job_id}")
    if not native:
        try:
            prep.result()
        except Exception as e:  # noqa: BLE001 - nothing can run without the clean store
            raise UeperfError(f"the prepare job (clean store, prior) failed; its log: {prep.paths.stderr}\n{e}") from None
    keys = [key for key in groups if g.row(key[0]).method]
    prot: Dict[Tuple[str, int], Any] = {}
    if keys:
        params("protect", f"afterok:{prep.job_id}")
        jobs = ex.submit_array([ProtectTask(g, row, seed) for row, seed in keys])
        prot = dict(zip(keys, jobs))
        for (row, seed), j in prot.items():
            book["protections"][f"{row} s{seed}"] = {"job": j.job_id, "log": str(j.paths.stdout), "submitted": stamp}
        echo(f"   protections: {len(keys)} jobs ({', '.join(j.job_id for j in jobs)})")
    cell_jobs: Dict[Any, Cell] = {}

    def submit_cells(key: Tuple[str, int], dep: str) -> None:
        params("cells", f"afterok:{dep}")
        cells = groups[key]
        jobs = ex.submit_array([CellTask(g, c, gpus=lc.gpus_per_cell, launcher="slurm", queued=time.time())
                                for c in cells])
        for c, j in zip(cells, jobs):
            cell_jobs[j] = c
            book["cells"][c.name] = {"job": j.job_id, "log": str(j.paths.stdout), "err": str(j.paths.stderr),
                                     "submitted": stamp}
        _write_book(g, book)

    failed: List[str] = []
    for key in groups:
        if key not in prot:
            submit_cells(key, prep.job_id)
    if native:
        for key, j in prot.items():
            submit_cells(key, j.job_id)
    else:
        for j in submitit.helpers.as_completed(list(prot.values()), poll_frequency=0.5):
            key = next(k for k, v in prot.items() if v is j)
            try:
                r = j.result()
            except Exception as e:  # noqa: BLE001 - its cells are not submitted
                failed += [f"{c.name}: its protection {key[0]} (seed {key[1]}) failed (log {j.paths.stderr}): "
                           f"{str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}"
                           for c in groups[key]]
                continue
            runner.gen_time[f"{key[0]} s{key[1]}"] = r["seconds"]
            submit_cells(key, j.job_id)
    _write_book(g, book)
    n = len(cell_jobs)
    echo(f"   cells: {n} jobs in {len({book['cells'][c.name]['job'].split('_')[0] for c in cell_jobs.values()})} "
         f"arrays; logs under {Path(g.out) / 'slurm'} (jobs.json maps cells to jobs and logs)")
    res: Dict[str, Any] = {"submitted": n, "active": len(active), "ran": 0}
    if native and not sl.wait:
        return res
    for j in submitit.helpers.as_completed(list(cell_jobs), poll_frequency=0.5 if not native else 30):
        c = cell_jobs[j]
        try:
            s = j.result()
        except Exception as e:  # noqa: BLE001 - reported with the cell, the others go on
            msg = str(e).strip().splitlines()
            failed.append(f"{c.name}: job {j.job_id} failed (log {j.paths.stderr}): {msg[-1] if msg else type(e).__name__}")
            continue
        res["ran"] += 1
        echo(f"── done {c.row} × {g.column(c)} (seed {c.seed}): job {j.job_id}")
        if after is not None:
            after(c, s)
    if failed:
        raise _failure(failed, len(todo), f"logs under {Path(g.out) / 'slurm'}")
    return res


# ───────────────────────────────────────────── dry run ──
def plan(runner: GridRunner, lc: Launch, command: str = "") -> List[str]:
    """What :func:`run_cells` would do, as lines (``--dry-run``). ``command``: the sweep's own
    command without ``--dry-run``, printed when the first cell's store is not made yet."""
    g = runner.g
    cells = g.cells()
    todo = [c for c in cells if runner.summary(c) is None]
    groups = _groups(todo)
    prot = [k for k in groups if g.row(k[0]).method]
    lines = [f"{len(cells)} cells ({len(g.rows)} rows × {len(g.columns())} columns × {len(g.seeds)} seeds): "
             f"{len(cells) - len(todo)} finished, {len(todo)} to run; {len(prot)} protected stores to make or reuse "
             f"({', '.join(f'{r} s{s}' for r, s in prot) or 'none'})"]
    k = lc.gpus_per_cell
    if lc.launcher == "inline":
        lines.append("launcher inline: one cell at a time in this process" + (f", each under torchrun × {k}" if k > 1 else ""))
    elif lc.launcher == "local":
        devices = visible_devices()
        workers = lc.workers or (max(1, len(devices) // k) if devices else 1)
        slots = device_slots(devices, workers, k)
        lines.append(f"launcher local: {workers} worker processes, "
                     + (f"CUDA_VISIBLE_DEVICES {' | '.join(','.join(s) for s in slots)}" if slots
                        else f"{max(1, _cpus() // workers)} CPU threads each")
                     + (f"; each cell under torchrun × {k}" if k > 1 else ""))
    else:
        sl = lc.slurm
        lines.append(f"launcher slurm (submitit, cluster {sl.cluster}): jobs under {Path(g.out).absolute() / 'slurm'}")
        lines.append(f"  1 prepare job: {json.dumps(job_parameters(lc, g, 'prepare'))}")
        if prot:
            lines.append(f"  {len(prot)} protection jobs (one array), --dependency=afterok:<prepare>: "
                         f"{json.dumps(job_parameters(lc, g, 'protect'))}")
        lines.append(f"  {len(todo)} cell jobs in {len(groups)} arrays (one per protection × seed), each "
                     f"--dependency=afterok:<its protection job, or prepare for clean rows>: "
                     f"{json.dumps(job_parameters(lc, g, 'cells'))}")
    if todo and k > 1:
        # a command that runs as printed: the first cell's store exists already, or the sweep makes it
        c = todo[0]
        store = runner.existing_store(c.row, c.seed)
        prior = c.paradigm == "fs" or runner.existing_prior() is not None
        if store is not None and prior:
            lines.append("first cell (runs as printed; the sweep reuses its run): " + " ".join(
                _shquote(a) for a in torchrun_command(runner, c, str(store), k)))
        else:
            what = (f"the prior (--prior {g.prior})" if store is not None else "the clean store"
                    if not g.row(c.row).method else f"the protected store of {c.row}, seed {c.seed}")
            then = f"; make it and run every cell with: {command}" if command else "; the sweep makes it first"
            lines.append(f"first cell {c.name}: needs {what}, which is not made yet{then}")
    return lines


def _shquote(a: str) -> str:
    import shlex
    return shlex.quote(a)


# ───────────────────────────────────────────── DeepSpeed configs ──
def deepspeed_sets(path: os.PathLike) -> List[str]:
    """The ``--set`` values of a DeepSpeed JSON config (launch/deepspeed/zero*.json).

    The engine builds its DeepSpeed config from the ueperf config (:func:`ueperf.parallel.deepspeed_config`),
    so a file may hold only what maps onto it: ``zero_optimization.stage`` (1 or 2) →
    ``parallel.zero_stage``; ``train_batch_size`` (the global batch) → ``train.batch_size``;
    ``bf16.enabled`` → ``train.precision`` (bf16 / fp32); ``gradient_clipping`` → ``optim.grad_clip``;
    "auto" leaves a value to the ueperf config. The engine's fixed entries must keep their values; any
    other key is refused by name (the engine would not apply it)."""
    from .parallel import ZERO_STAGES, deepspeed_config
    p = Path(path).expanduser()
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"DeepSpeed config {p}: cannot read it as JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"DeepSpeed config {p}: expected a JSON object")
    fixed = deepspeed_config(micro_batch=1, zero_stage=1, bf16=True, grad_clip=0.0)
    mapped = {"train_micro_batch_size_per_gpu", "train_batch_size", "zero_optimization", "bf16", "gradient_clipping",
              "data_types"}
    sets = ["parallel.backend=deepspeed"]
    for key in doc:
        if key not in fixed and key not in mapped:
            raise ConfigError(f"DeepSpeed config {p}: {key!r} is not something ueperf's engine takes from a file (it "
                              f"builds the DeepSpeed config from the ueperf config: "
                              f"{', '.join(sorted(set(fixed) | mapped))}); remove it")
        if key in fixed and key not in mapped and doc[key] != fixed[key]:
            raise ConfigError(f"DeepSpeed config {p}: {key}={doc[key]!r}; the engine runs with {fixed[key]!r}")
    zo = doc.get("zero_optimization", {})
    if not isinstance(zo, dict) or set(zo) - {"stage"}:
        raise ConfigError(f"DeepSpeed config {p}: zero_optimization may hold only 'stage' (ueperf runs ZeRO "
                          f"{' and '.join(map(str, ZERO_STAGES))} with DeepSpeed's defaults)")
    stage = zo.get("stage", 1)
    if stage not in ZERO_STAGES:
        raise ConfigError(f"DeepSpeed config {p}: zero_optimization.stage={stage!r}; ueperf supports ZeRO stages "
                          f"{' and '.join(map(str, ZERO_STAGES))}")
    sets.append(f"parallel.zero_stage={stage}")
    mb = doc.get("train_micro_batch_size_per_gpu", "auto")
    if mb != "auto":
        raise ConfigError(f"DeepSpeed config {p}: train_micro_batch_size_per_gpu={mb!r}; use \"auto\" (the engine "
                          f"gives each rank train.batch_size / ranks) and set the global batch with train_batch_size")
    tb = doc.get("train_batch_size", "auto")
    if tb != "auto":
        if not isinstance(tb, int) or tb < 1:
            raise ConfigError(f"DeepSpeed config {p}: train_batch_size={tb!r}; expected a positive integer or \"auto\"")
        sets.append(f"train.batch_size={tb}")
    bf = doc.get("bf16", {"enabled": "auto"})
    en = bf.get("enabled", "auto") if isinstance(bf, dict) else None
    if not isinstance(bf, dict) or set(bf) - {"enabled"} or en not in ("auto", True, False):
        raise ConfigError(f"DeepSpeed config {p}: bf16 must be {{\"enabled\": true | false | \"auto\"}}")
    if en in (True, False):
        sets.append(f"train.precision={'bf16' if en else 'fp32'}")
    dt = doc.get("data_types")
    if dt is not None and dt != {"buffer_dtype": "bf16"}:
        raise ConfigError(f"DeepSpeed config {p}: data_types={dt!r}; the engine sets {{\"buffer_dtype\": \"bf16\"}} "
                          f"itself when bf16 is on")
    gc = doc.get("gradient_clipping", "auto")
    if gc != "auto":
        if not isinstance(gc, (int, float)) or isinstance(gc, bool) or gc < 0:
            raise ConfigError(f"DeepSpeed config {p}: gradient_clipping={gc!r}; expected a number >= 0 or \"auto\"")
        sets.append(f"optim.grad_clip={gc:g}")
    return sets


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ueperf.launch",
                                description="Helpers of the launch/ scripts.")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("deepspeed-sets", help="print the ueperf arguments (--set KEY=VALUE, one word a line) "
                                              "of a DeepSpeed JSON config")
    d.add_argument("file")
    args = p.parse_args(argv)
    if args.cmd == "deepspeed-sets":
        print("\n".join(w for s in deepspeed_sets(args.file) for w in ("--set", s)))
    return 0


__all__ = ["Launch", "SlurmOptions", "LAUNCHERS", "add_arguments", "from_args", "check", "run_cells", "plan",
           "CellTask", "ProtectTask", "PrepareTask", "train_args", "torchrun_command", "read_events",
           "deepspeed_sets", "job_parameters", "slurm_minutes", "visible_devices"]


if __name__ == "__main__":
    from .cli import run_cli
    run_cli(main)
