"""Every GPU figure of ueperf in one prepared call: ``bash bench/gpu/run.sh`` (issue 17).

    bash bench/gpu/run.sh                       # one GPU, full sizes, 8-minute budget
    bash bench/gpu/run.sh --budget 300          # a shorter lease: the most valuable steps first
    bash bench/gpu/run.sh --smoke               # every step at tiny sizes on the CPU (~1 min)
    python3 bench/gpu/run.py --list             # the steps, in the order they run, with their limits

Runs on a bare single-GPU machine whose python3 has torch (CUDA build), triton, numpy, pytest,
tqdm, matplotlib and pillow: ``PYTHONPATH=.`` only, nothing to install, no network, no data
files (synthetic tensors of the full size stand in for CIFAR-10 and Tiny-ImageNet).

The steps run in order of value (see ``PLAN``), each in its own process (``bench/gpu/steps.py``)
under a time limit: the smaller of the step's own cap and what is left of ``--budget`` (minus a
reserve for the last write). A step that fails or runs out of time is recorded as such with the
tail of its output, and the run goes on; a step that no longer fits is recorded as skipped. The
report is rewritten after every step — ``gpu_<date>_<gpu-model>.md`` and ``.json`` plus the
steps' full output in ``.log`` — into ``$OUT`` when that variable is set, else ``bench/results/``
(``--out`` wins; ``--smoke`` names its files ``gpu-smoke_...``). A run cut off from outside
(SIGTERM) still leaves the report of every step it finished.

Targets (issue 17): ResNet-18 CIFAR training >= 40,000 img/s and >= 10x the plain PyTorch loop;
fused augmentation <= 2x a copy of the same bytes; sample-wise EM on CIFAR-10 <= 2 min; ACM on
5,000 x 512 <= 10 ms; ST-Full on CIFAR-10 ResNet-18 <= 5 min. ``bench/results/README.md`` says
what each figure is.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ueperf.files import write_json_atomic, write_text_atomic  # noqa: E402


@dataclass
class Step:
    name: str
    kind: str            # the function in steps.py
    title: str
    cap_s: float         # the most this step may take on the GPU
    min_s: float         # not started with less than this left
    cuda_only: bool = False


# In order of value: the headline numbers first, the long compilations last.
PLAN: List[Step] = [
    Step("env", "env", "Device and versions", 60, 5),
    Step("train32", "train", "ResNet-18 training, 32 px, 50,000 images: ueperf (eager) vs the plain PyTorch loop",
         150, 40),
    Step("kernels", "kernels", "Fused augmentation and PGD kernels vs torch and vs a copy of the same bytes", 100, 20),
    Step("acm", "acm", "ACM per backend on 5,000 x 512 features", 60, 10),
    Step("gpu_tests", "gpu_tests", "CUDA-only tests (pytest -m gpu)", 90, 20, cuda_only=True),
    Step("em", "em", "EM sample-wise on 50,000 images: time per round, projected total", 110, 40),
    Step("st", "st", "ST-CG vs NT: per-epoch overhead (short runs of the CIFAR-10 recipe)", 120, 45),
    Step("fast", "fast", "Fast victim (fast_victim recipe) on 50,000 images: per-epoch time, one run and a "
                         "10 x 8 grid projected", 90, 30),
    Step("profile", "profile", "Profiler summary of the training step", 75, 20),
    Step("train32_compiled", "train", "ResNet-18 training, 32 px: ueperf with torch.compile", 200, 70),
    Step("train64", "train", "ResNet-18 training, 64 px, 50,000 images (100 classes): ueperf (eager) vs the "
         "plain PyTorch loop", 120, 40),
    Step("train64_compiled", "train", "ResNet-18 training, 64 px: ueperf with torch.compile", 200, 70),
    Step("kernel_tests", "kernel_tests", "Kernel tests on the GPU (tests/kernels: Triton compiled)", 150, 30,
         cuda_only=True),
]
STEP_NAMES = [s.name for s in PLAN]


def sizes(smoke: bool, cpus: int) -> Dict[str, Dict[str, Any]]:
    """Each step's parameters: full size on the GPU, tiny with --smoke."""
    if not smoke:
        t32 = dict(size=32, n=50000, classes=10, width=1.0, batch=512, batches=[512, 128], epochs=2,
                   ref_steps=100, ref_warmup=20, workers=min(8, cpus), compile=False)
        t64 = dict(t32, size=64, classes=100, batches=[512], ref_steps=50, ref_warmup=10)
        return {
            "env": {},
            "train32": t32,
            "train32_compiled": dict(t32, batches=[512], compile=True),
            "train64": t64,
            "train64_compiled": dict(t64, compile=True),
            "kernels": dict(batch=512, calls=[
                ["augment", "32px-cg", 32, [], "triton,torch,copy,sample_params"],
                ["augment", "32px-cropflip", 32, ["--no-cg"], "triton,torch,copy"],
                ["pgd", "32px", 32, [], "triton,torch,copy"],
                ["augment", "64px-cg", 64, [], "triton,torch,copy"],
                ["augment", "32px-cg", 32, [], "torch.compile,copy"],
                ["pgd", "32px", 32, [], "torch.compile,copy"]]),
            "acm": dict(n=5000, dim=512, warmup=3, reps=20),
            "em": dict(n=50000, size=32, classes=10, width=1.0, rounds=3),
            "st": dict(n=50000, n_test=10000, size=32, width=1.0, epochs=3),
            "fast": dict(n=50000, n_test=10000, size=32, epochs=3),
            "profile": dict(size=32, classes=10, width=1.0, batch=512, steps=20),
            "gpu_tests": {}, "kernel_tests": {},
        }
    t32 = dict(size=16, n=128, classes=10, width=0.125, batch=32, batches=[32], epochs=2,
               ref_steps=2, ref_warmup=1, workers=0, compile=False)
    t64 = dict(t32, size=40, n=64)  # > 32 px: the ImageNet stem, as at 64 px
    return {
        "env": {},
        "train32": t32,
        "train32_compiled": dict(t32, compile=True),
        "train64": t64,
        "train64_compiled": dict(t64, compile=True),
        "kernels": dict(batch=16, warmup=1, reps=2, calls=[
            ["augment", "32px-cg", 16, [], "triton,torch,copy,sample_params"],
            ["augment", "32px-cropflip", 16, ["--no-cg"], "triton,torch,copy"],
            ["pgd", "32px", 16, [], "triton,torch,copy"],
            ["augment", "32px-cg", 16, [], "torch.compile,copy"],
            ["pgd", "32px", 16, [], "torch.compile,copy"]]),
        "acm": dict(n=200, dim=32, warmup=1, reps=2),
        "em": dict(n=64, size=16, classes=10, width=0.125, rounds=2,
                   overrides=dict(steps=2, train_steps=2, batch_size=32, train_batch_size=32, eval_batch_size=64)),
        "st": dict(n=128, n_test=32, size=16, width=0.125, epochs=2,
                   sets=["train.batch_size=32", "train.eval_batch_size=64", "acm.subset=40", "acm.batch_size=64"]),
        "fast": dict(n=128, n_test=32, size=16, epochs=2,
                     sets=["model.width=0.125", "train.batch_size=32", "train.eval_batch_size=64", "fast.whiten_images=64"]),
        "profile": dict(size=16, classes=10, width=0.125, batch=16, steps=3),
        "gpu_tests": {}, "kernel_tests": {},
    }


# ───────────────────────────────────────────── targets ──
def _best_train(figs: Dict[str, Dict], steps: List[str]):
    best = None
    for s in steps:
        for k, v in figs.get(s, {}).items():
            m = re.fullmatch(r"ueperf_(eager|compiled)_b(\d+)_img_s", k)
            if m and isinstance(v, (int, float)) and (best is None or v > best[0]):
                best = (v, f"{m.group(1)}, batch {m.group(2)}", figs[s].get(f"ueperf_{m.group(1)}_b{m.group(2)}_ratio"))
    return best


def targets(doc: Dict) -> List[Dict[str, str]]:
    """The issue's targets with what this run measured (figures of the finished steps)."""
    figs = {s["name"]: (s.get("results") or {}).get("figures", {}) for s in doc["steps"]}
    smoke = doc["smoke"]
    rows = []

    def row(figure, target, value, ok, shown):
        verdict = "unmeasured" if value is None else ("smoke: sizes not comparable" if smoke else
                                                      ("met" if ok else "NOT met"))
        rows.append({"figure": figure, "target": target, "measured": shown if value is not None else "—",
                     "verdict": verdict})

    best = _best_train(figs, ["train32", "train32_compiled"])
    ref = figs.get("train32", {}).get("reference_img_s")
    row("ResNet-18 training, 32 px, 50,000 images (best ueperf mode)", ">= 40,000 img/s",
        best and best[0], best and best[0] >= 40000, best and f"{best[0]:,.0f} img/s ({best[1]})")
    ratio = best[0] / ref if best and ref else None
    row("ueperf / plain PyTorch loop, 32 px (same GPU)", ">= 10x", ratio, ratio and ratio >= 10,
        ratio and f"{ratio:.1f}x ({ref:,.0f} img/s reference)")
    aug = figs.get("kernels", {}).get("augment_32px-cg_triton_x_copy")
    row("fused augmentation (Triton, 32 px, CG) / copy of the same bytes", "<= 2x", aug, aug and aug <= 2,
        aug and f"{aug:.2f}x")
    em = figs.get("em", {})
    p10 = em.get("projected_10_rounds_s")
    row("EM sample-wise on 50,000 images (10 rounds projected)", "<= 120 s", p10, p10 and p10 <= 120,
        p10 and f"{p10:.0f} s ({em['round_s']:.1f} s/round; 30 rounds: {em['projected_30_rounds_s']:.0f} s)")
    acm_f = figs.get("acm", {})
    key = "acm_torch_pca2_cuda_ms" if "acm_torch_pca2_cuda_ms" in acm_f else "acm_torch_pca2_cpu_ms"
    a = acm_f.get(key)
    row(f"ACM on 5,000 x 512, torch/pca2 on {'the GPU' if 'cuda' in key else 'the CPU'}", "<= 10 ms", a,
        a is not None and a <= 10, a is not None and f"{a:.2f} ms")
    st = figs.get("st", {}).get("st_full_projected_s")
    row("ST-Full on CIFAR-10 ResNet-18 (projected from per-epoch times)", "<= 300 s", st, st and st <= 300,
        st and f"{st:.0f} s")
    fv = figs.get("fast", {})
    grid = fv.get("grid_10x8_projected_s")
    row("10 x 8 grid of fast-victim runs, CIFAR-10 shapes (projected)", "<= 600 s", grid, grid and grid <= 600,
        grid and f"{grid:.0f} s ({fv['fast_run_projected_s']:.1f} s a run)")
    return rows


# ───────────────────────────────────────────── report ──
def _fmt(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "nan"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    if v is None:
        return "—"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _md_table(columns, rows) -> List[str]:
    return ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)] + \
        ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]


def render(doc: Dict) -> str:
    env = next(((s.get("results") or {}).get("figures", {}) for s in doc["steps"] if s["name"] == "env"), {})
    L = [f"# GPU suite{' (smoke)' if doc['smoke'] else ''} — {doc['hardware']}, {doc['date']}", "",
         f"Command: `{doc['command']}`" + (f" (invoked as `{doc['invoked_as']}`)" if doc.get("invoked_as") else ""),
         "",
         f"Versions: torch {env.get('torch', doc['torch'])}, triton {env.get('triton', '?')}, CUDA "
         f"{env.get('cuda', '?')}, cuDNN {env.get('cudnn', '?')}, Python {env.get('python', '?')}, numpy "
         f"{env.get('numpy', '?')}; driver / max SM clock / power limit: {env.get('nvidia_smi', 'n/a')}; commit "
         f"{env.get('git_commit', '?')}.", "",
         f"Device: {env.get('device_name', doc['hardware'])}"
         + (f", {env['device_memory_gib']} GiB, {env['sm_count']} SMs, compute capability {env['capability']}"
            if "sm_count" in env else "") + f"; {env.get('cpu_count', os.cpu_count())} CPU cores.", "",
         f"Budget {doc['budget_s']:.0f} s, used {doc['elapsed_s']:.0f} s; {doc['state']}. Synthetic tensors of the "
         "full size stand in for the real data (not carried to the machine).", "",
         "## Targets", ""]
    L += _md_table(["figure", "target", "measured", "verdict"],
                   [[r["figure"], r["target"], r["measured"], r["verdict"]] for r in doc["targets"]])
    L += ["", "## Steps", ""]
    L += _md_table(["step", "status", "seconds", "limit s", "note"],
                   [[s["name"], s["status"], s.get("seconds"), s.get("limit_s"), s.get("reason", "")]
                    for s in doc["steps"]])
    for s in doc["steps"]:
        res = s.get("results") or {}
        if s["name"] == "env" or (not res.get("figures") and not s.get("error_tail")):
            continue
        L += ["", f"## {s['name']}: {s['title']}", "", f"Status: **{s['status']}**"
              + (f" ({s['reason']})" if s.get("reason") else "") + "."]
        for t in res.get("tables", []):
            L += ["", f"**{t['title']}**", ""] + _md_table(t["columns"], t["rows"])
        if res.get("figures"):
            L += ["", "<details><summary>every figure</summary>", ""]
            L += _md_table(["figure", "value"], sorted(res["figures"].items()))
            L += ["", "</details>"]
        for n in res.get("notes", []):
            L += ["", n]
        if s.get("error_tail"):
            L += ["", "Output tail:", "", "```text", s["error_tail"].rstrip(), "```"]
    return "\n".join(L).rstrip() + "\n"


# ───────────────────────────────────────────── the driver ──
class Interrupted(Exception):
    pass


def _on_signal(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def gpu_name() -> Optional[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"],
                             capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    import torch
    return torch.cuda.get_device_name(0)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def tail(path: Path, chars: int = 3000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-chars:].decode("utf-8", "replace")


def run_step(step: Step, params: Dict, limit: float, work: Path, env: Dict[str, str], log) -> Dict:
    """Run one step in its own process group, killed at ``limit`` seconds."""
    pfile, rfile, lfile = (work / f"{step.name}.{x}" for x in ("params.json", "result.json", "log"))
    write_json_atomic(pfile, params)
    cmd = [sys.executable, str(HERE / "steps.py"), "--step", step.kind, "--params", str(pfile), "--result", str(rfile)]
    rec: Dict[str, Any] = {"limit_s": round(limit, 1)}
    raise_after = None
    t0 = time.perf_counter()
    with open(lfile, "wb") as lf:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=lf, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=limit)
            rec["status"] = "ok" if rc == 0 else "failed"
            if rc:
                rec["reason"] = f"exit status {rc}"
        except subprocess.TimeoutExpired:
            rec.update(status="timeout", reason=f"stopped at its limit of {limit:.0f} s")
        except Interrupted as e:
            rec.update(status="interrupted", reason=f"the suite received {e}")
            raise_after = str(e)
        finally:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the step's whole group: DataLoader workers, pytest
                except ProcessLookupError:
                    pass
                proc.wait()
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    try:
        rec["results"] = json.loads(rfile.read_text())
    except (OSError, ValueError):
        rec["results"] = None
    if rec["status"] != "ok":
        rec["error_tail"] = tail(lfile)
    log.write(f"\n===== {step.name} ({rec['status']}, {rec['seconds']} s) =====\n".encode())
    log.write(lfile.read_bytes() if lfile.exists() else b"")
    log.flush()
    rec["_raise"] = raise_after
    return rec


def summary_state(doc: Dict, interrupted: Optional[str]) -> str:
    """``complete: 12 of 12 steps ok`` or what went otherwise, by status."""
    counts: Dict[str, int] = {}
    for s in doc["steps"]:
        counts[s["status"]] = counts.get(s["status"], 0) + 1
    n = len(doc["steps"])
    head = (f"interrupted ({interrupted})" if interrupted else
            "complete" if counts.get("ok", 0) == n else "finished")
    return f"{head}: {counts.get('ok', 0)} of {n} steps ok" + "".join(
        f", {v} {k}" for k, v in sorted(counts.items()) if k != "ok")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run (default 480 = 8 min)")
    ap.add_argument("--smoke", action="store_true", help="every step at tiny sizes on the CPU")
    ap.add_argument("--steps", default="", help="comma-separated subset of the steps (default: all, in order)")
    ap.add_argument("--out", default="", help="output folder (default: $OUT when set, else bench/results/)")
    ap.add_argument("--device", default="auto", help="auto (cuda; refused without one unless --smoke) | cpu | cuda")
    ap.add_argument("--list", action="store_true", help="print the steps and exit")
    ap.add_argument("--delay", action="append", default=[], metavar="STEP=SECONDS",
                    help="test hook: make STEP sleep SECONDS first (checks that the budget is enforced)")
    args = ap.parse_args(argv)
    if args.list:
        for s in PLAN:
            print(f"{s.name:18s} cap {s.cap_s:4.0f} s, min {s.min_s:3.0f} s{'  (CUDA only)' if s.cuda_only else ''}"
                  f"  {s.title}")
        return 0
    t_start = time.perf_counter()
    chosen = [x.strip() for x in args.steps.split(",") if x.strip()]
    bad = [x for x in chosen if x not in STEP_NAMES]
    if bad:
        raise SystemExit(f"--steps: unknown {', '.join(bad)}; the steps are {', '.join(STEP_NAMES)}")
    plan = [s for s in PLAN if not chosen or s.name in chosen]
    delays = {}
    for d in args.delay:
        k, _, v = d.partition("=")
        if k not in STEP_NAMES or not v:
            raise SystemExit(f"--delay {d!r}: expected STEP=SECONDS with STEP one of {', '.join(STEP_NAMES)}")
        delays[k] = float(v)

    import torch
    if args.smoke or args.device == "cpu":
        device = "cpu"
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device here: this suite measures a GPU. Use --smoke for the CPU check of "
                             "every step, or --device cpu to force the full sizes on the CPU (hours).")
        device = "cuda" if args.device == "auto" else args.device
    hardware = gpu_name() if device.startswith("cuda") else f"cpu-{os.cpu_count()}core"
    date = _dt.date.today().isoformat()
    out = Path(args.out or os.environ.get("OUT") or REPO / "bench" / "results").expanduser()
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{'gpu-smoke' if args.smoke else 'gpu'}_{date}_{slug(hardware)}"
    md_path, json_path, log_path = (stem.with_suffix(x) for x in (".md", ".json", ".log"))
    budget = float(args.budget)
    reserve = 2.0 if args.smoke else 10.0
    params_all = sizes(args.smoke, os.cpu_count() or 1)
    work = Path(tempfile.mkdtemp(prefix="ueperf_gpu_suite_"))
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                          if p]))
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    doc: Dict[str, Any] = {
        "schema": 1, "suite": "ueperf GPU suite (bench/gpu/run.py)", "smoke": args.smoke, "date": date,
        "hardware": hardware, "device": device, "torch": torch.__version__,
        "command": "PYTHONPATH=. " + shlex.join(["python3", "bench/gpu/run.py", *(sys.argv[1:] if argv is None
                                                                                   else argv)]),
        "invoked_as": os.environ.get("UEPERF_GPU_SUITE_ENTRY", ""), "budget_s": budget,
        "started": _dt.datetime.now().isoformat(timespec="seconds"), "elapsed_s": 0.0, "state": "running",
        "steps": [{"name": s.name, "title": s.title, "status": "pending"} for s in plan], "targets": [],
        "files": {"markdown": md_path.name, "json": json_path.name, "log": log_path.name},
    }

    def write(state: str) -> None:
        doc["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        doc["state"] = state
        doc["targets"] = targets(doc)
        write_json_atomic(json_path, doc)
        write_text_atomic(md_path, render(doc))

    def run_or_skip(step: Step, rec: Dict, interrupted: Optional[str], log) -> Optional[str]:
        """Run ``step`` under its limit, or record why not; returns the signal name if one came."""
        left = budget - (time.perf_counter() - t_start) - reserve
        need = 2.0 if args.smoke else step.min_s
        if interrupted:
            rec.update(status="skipped", reason=f"the suite received {interrupted}")
        elif step.cuda_only and device == "cpu":
            rec.update(status="skipped", reason="skipped: no CUDA (this step needs a GPU by nature)")
        elif left < need:
            rec.update(status="skipped", reason=f"budget: {max(left, 0):.0f} s left, the step needs {need:.0f} s")
        else:
            limit = min(step.cap_s * (1.5 if args.smoke else 1.0), left)
            params = dict(params_all[step.name], device=device, smoke=args.smoke, work=str(work), kind=step.kind,
                          delay=delays.get(step.name, 0.0))
            if step.name.endswith("_compiled"):  # the reference loop ran in the eager step
                eager = next((s for s in doc["steps"] if s["name"] == step.name[:-len("_compiled")]), {})
                params["reference_img_s"] = (eager.get("results") or {}).get("figures", {}).get("reference_img_s")
            print(f"[{time.perf_counter() - t_start:6.1f} s] {step.name}: limit {limit:.0f} s ...", flush=True)
            got = run_step(step, params, limit, work, env, log)
            interrupted = got.pop("_raise")
            rec.update(got)
        print(f"[{time.perf_counter() - t_start:6.1f} s] {step.name}: {rec['status']}"
              + (f" ({rec['reason']})" if rec.get("reason") else "")
              + (f" in {rec['seconds']} s" if "seconds" in rec else ""), flush=True)
        return interrupted

    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    print(f"GPU suite: {hardware}, budget {budget:.0f} s, {len(plan)} steps; report {md_path}", flush=True)
    write("running")
    interrupted = None
    try:
        try:
            with open(log_path, "wb") as log:
                for i, step in enumerate(plan):
                    interrupted = run_or_skip(step, doc["steps"][i], interrupted, log)
                    write("running")
        except Interrupted as e:  # a signal outside a step's wait (between steps, while writing)
            interrupted = interrupted or str(e)
        for s in old:  # the last write is not to be cut short
            signal.signal(s, signal.SIG_IGN)
        for rec in doc["steps"]:
            if rec["status"] == "pending":
                rec.update(status="skipped", reason=f"the suite received {interrupted}")
        write(summary_state(doc, interrupted))
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        shutil.rmtree(work, ignore_errors=True)
    print("", flush=True)
    for r in doc["targets"]:
        print(f"  {r['figure']}: {r['measured']} (target {r['target']}: {r['verdict']})")
    print(f"\n{doc['state']} in {doc['elapsed_s']:.0f} s\nwrote {md_path}\n      {json_path}\n      {log_path}",
          flush=True)
    return 130 if interrupted else 0


if __name__ == "__main__":
    raise SystemExit(main())
