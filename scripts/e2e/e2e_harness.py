"""The harness around the serving loop: modes, the safety rule, measurement, reports.

The orchestrator (no torch, never touches the GPU itself) probes the device in a
short-lived child, plans the run, applies the safety rule, then runs each mode
as its own worker process: a mode is a process-wide setting (a memory cap, a
preloaded library), and every mode starts from the same seed. It compares the
workers' token logs and computes the ratios in the same run.

Modes:
  recompute    the KV pool is what the budget B leaves beside weights and
               workspace (on a GPU the process is also capped at B with
               torch.cuda.set_per_process_memory_fraction); sessions that do
               not fit are dropped and re-prefilled on their next turn.
  kvpager      every session kept; on a GPU the worker runs with libkvpager.so
               preloaded (kvpager run, or LD_PRELOAD) and KVPAGER_HBM_BUDGET=B,
               so the pager holds HBM residency to B. On a CPU the preload does
               not apply: the mode keeps every session without it.
  kvpager-nvme as kvpager, with a small host tier so idle sessions spill to the
               NVMe store (GPU only).
  hbm          all-in-HBM, no preload: the ceiling.
  hbm-preload  all-in-HBM under the preload, the pager on with the budget it
               takes by default (above the footprint): the preload's overhead
               when nothing is oversubscribed (GPU only).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

import e2e_plan as P

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
AGENTS = os.path.join(HERE, "agents.py")

ALL_MODES = ("hbm", "hbm-preload", "kvpager", "kvpager-nvme", "recompute")
PRELOAD_MODES = ("kvpager", "kvpager-nvme", "hbm-preload")
GPU_ONLY_MODES = ("kvpager-nvme", "hbm-preload")
DEFAULT_MODES = {"cpu": ("hbm", "kvpager", "recompute"),
                 "cuda": ("hbm", "hbm-preload", "kvpager", "recompute")}
EXACT_VS_HBM = ("kvpager", "kvpager-nvme", "hbm-preload")  # same arithmetic, only placement differs
SCHEMA = 1

GOALS = {"ttft_speedup_vs_recompute": 10.0, "decode_ratio_vs_hbm": 0.8, "preload_overhead": 0.02}

# Fields every mode result carries (the CI check asserts them).
RESULT_FIELDS = ("mode", "device", "backend", "preload", "plan", "memory", "metrics", "turns", "pager")
METRIC_FIELDS = ("ttft_resumed_p50_s", "ttft_resumed_p99_s", "ttft_first_p50_s", "decode_tok_s",
                 "sessions", "sessions_without_recompute", "resumed_turns", "resumed_recomputed",
                 "serve_wall_s")


class UsageError(Exception):
    """Bad arguments or a refused configuration: exit status 2."""


# =========================================================================== planning


def resolve(args: argparse.Namespace, device: str) -> dict:
    """Arguments + device -> the run spec every worker rebuilds the plan from."""
    preset = args.preset or ("llama3-8b" if device == "cuda" else "tiny")
    if preset not in P.PRESETS:
        raise UsageError(f"--preset {preset}: one of {', '.join(P.PRESETS)}")
    wd = P.WORKLOADS[preset]
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
    tool_min, tool_max = wd.tool_min, wd.tool_max
    if args.tool_tokens:
        try:
            lo, hi = args.tool_tokens.split(":")
            tool_min, tool_max = int(lo), int(hi)
        except ValueError:
            raise UsageError(f"--tool-tokens {args.tool_tokens}: expected MIN:MAX, e.g. 200:400") from None
    spec = {
        "preset": preset, "device": device, "dtype": dtype, "seed": args.seed,
        "backend": args.backend, "hf_cache": args.hf_cache,
        "sessions": pick(args.sessions, wd.sessions), "context": pick(args.context, wd.context),
        "tool_min": tool_min, "tool_max": tool_max, "reply": pick(args.reply, wd.reply),
        "rr_rounds": pick(args.rr_rounds, wd.rr_rounds), "random_turns": pick(args.random_turns, wd.random_turns),
        "prefill_chunk": pick(args.prefill_chunk, wd.prefill_chunk),
        "resident": pick(args.resident_sessions, wd.resident),
        "budget": None if args.budget in (None, "auto") else parse_size(args.budget, "--budget"),
        "quiet": args.quiet,
        "turn_stats": not getattr(args, "no_turn_stats", False),
        "deterministic": not getattr(args, "nondeterministic", False),
    }
    for flag, key in (("--rr-rounds", "rr_rounds"), ("--random-turns", "random_turns")):
        if spec[key] < 0:
            raise UsageError(f"{flag} {spec[key]}: must be 0 or more")
    if device == "cpu" and dtype == "float16":
        raise UsageError("--dtype float16: PyTorch on the CPU has no half-precision matmul for this model; "
                         "use float32 or bfloat16 there")
    return spec


def pick(value, default):
    return default if value is None else value


def parse_size(text: str, flag: str) -> int:
    try:
        return P.parse_bytes(text)
    except ValueError as e:
        raise UsageError(f"{flag}: {e}") from None


def plan_from(spec: dict) -> P.Plan:
    wl = P.Workload(spec["seed"], spec["sessions"], spec["context"], spec["tool_min"], spec["tool_max"],
                    spec["reply"], spec["rr_rounds"], spec["random_turns"])
    try:
        return P.make_plan(P.PRESETS[spec["preset"]], spec["dtype"], spec["device"], wl, spec["prefill_chunk"],
                           spec["budget"], spec["resident"])
    except P.PlanError as e:
        raise UsageError(str(e)) from None


# =========================================================================== probe + safety


PROBE = r"""
import json, subprocess, sys
out = {"python": sys.version.split()[0], "executable": sys.executable}
try:
    import torch
    out["torch"] = torch.__version__
    out["cuda"] = bool(torch.cuda.is_available())
    if out["cuda"]:
        free, total = torch.cuda.mem_get_info()
        p = torch.cuda.get_device_properties(0)
        out.update(name=p.name, total_bytes=int(total), free_bytes=int(free), cuda_runtime=torch.version.cuda,
                   capability="%d.%d" % (p.major, p.minor))
except Exception as e:
    out["torch_error"] = "%s: %s" % (type(e).__name__, e)
try:
    import transformers
    out["transformers"] = transformers.__version__
except Exception as e:
    out["transformers_error"] = "%s: %s" % (type(e).__name__, e)
if out.get("cuda"):
    try:
        out["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                       capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
    except Exception as e:
        out["driver"] = "unknown (%s)" % e
print(json.dumps(out))
"""


def clean_env(preload: bool) -> Dict[str, str]:
    """The environment for a child: without any libkvpager.so preload and, for
    processes that are not meant to be paged, without KVPAGER_* settings."""
    env = dict(os.environ)
    kept = [p for p in env.get("LD_PRELOAD", "").replace(":", " ").split() if "libkvpager" not in p]
    if kept:
        env["LD_PRELOAD"] = " ".join(kept)
    else:
        env.pop("LD_PRELOAD", None)
    if not preload:
        for k in [k for k in env if k.startswith("KVPAGER_")]:
            del env[k]
    env["PYTHONUNBUFFERED"] = "1"
    return env


def probe_device(python: str) -> dict:
    """What the machine has, measured in a child that exits before any mode runs
    (so no CUDA context of ours holds memory while the modes run)."""
    try:
        r = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, env=clean_env(False), timeout=300)
    except OSError as e:
        raise UsageError(f"--python {python}: cannot run it ({e.strerror})") from None
    if r.returncode != 0:
        raise RuntimeError(f"device probe failed: {r.stderr.strip()[-2000:]}")
    info = json.loads(r.stdout.strip().splitlines()[-1])
    if "torch" not in info:
        raise UsageError(f"{python} cannot import torch ({info.get('torch_error')}); install python3-torch "
                         "(scripts/setup) or run with a Python that has it")
    return info


def host_mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable")


def safety(plan: P.Plan, probe: dict, reserve: Optional[int]) -> dict:
    """The safety rule: the managed footprint (weights + all sessions' KV +
    workspace) must stay below the free memory of the card (of the host, on a
    CPU run), with a reserve for what is not managed (CUDA contexts, small
    allocations). The budget B is what is small, never the footprint above the
    card. The same limit is the kvpager ceiling (KVPAGER_CUDA_MANAGED_LIMIT)."""
    if plan.device == "cuda":
        free, total, what = probe["free_bytes"], probe["total_bytes"], f"free memory of {probe.get('name', 'the GPU')}"
        res = reserve if reserve is not None else max(3 * P.GiB, total // 20)
    else:
        free, total, what = host_mem_available(), None, "available host memory (CPU run)"
        res = reserve if reserve is not None else max(P.GiB, free // 10)
    limit = free - res
    ok = plan.footprint_bytes <= limit
    return {"free_bytes": free, "total_bytes": total, "reserve_bytes": res, "limit_bytes": limit,
            "footprint_bytes": plan.footprint_bytes, "budget_bytes": plan.budget_bytes, "ok": ok, "what": what}


def safety_text(plan: P.Plan, s: dict) -> str:
    h = P.human
    return (f"footprint {h(s['footprint_bytes'])} = weights {h(plan.weight_bytes)} + KV {h(plan.kv_total_bytes)} "
            f"({plan.workload.sessions} sessions x {h(plan.session_kv_bytes)}) + workspace {h(plan.workspace_bytes)}; "
            f"{s['what']} {h(s['free_bytes'])}, reserve {h(s['reserve_bytes'])}, "
            f"{'managed ceiling' if plan.device == 'cuda' else 'limit'} "
            f"{h(s['limit_bytes'])}; budget B {h(plan.budget_bytes)} holds {plan.resident_sessions} of "
            f"{plan.workload.sessions} sessions ({plan.pager_resident_sessions} at the pager's high watermark, "
            f"{P.PAGER_HIGH_WATERMARK:.0%} of B)")


# =========================================================================== launching modes


def find_built(explicit: Optional[str], *rel: str) -> Optional[str]:
    """An explicit path if it exists, else the file in a release build tree
    (build/default, build/ci; never an ASan build: its runtime cannot be
    preloaded into Python)."""
    if explicit:
        return os.path.abspath(explicit) if os.path.exists(explicit) else None
    for preset in ("default", "ci"):
        p = os.path.join(REPO, "build", preset, *rel)
        if os.path.exists(p):
            return p
    return None


def has_subcommand(binary: Optional[str], sub: str) -> bool:
    if not binary:
        return False
    try:
        r = subprocess.run([binary, sub, "--help"], capture_output=True, text=True, env=clean_env(False), timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def failed_moves_text(pager: dict) -> str:
    """The pager's failed moves by kind and what the driver said (counters at
    the end of the run, model load included), or "" when none failed."""
    raw = pager.get("raw_end") or {}
    failed = {k: int(v.get("failed", 0)) for k, v in raw.get("moves", {}).items() if v.get("failed")}
    if not failed and not raw.get("move_failures"):
        return ""
    parts = ", ".join(f"{k} {v}" for k, v in failed.items()) or f"{raw['move_failures']} (kinds not reported)"
    ip = pager.get("interposer_end") or {}
    driver = ""
    if ip.get("mover.failed_ranges") or ip.get("mover.driver_errors"):
        driver = (f"; driver: {ip.get('mover.failed_ranges', 0)} move ranges refused, "
                  f"{ip.get('mover.driver_errors', 0)} errors, last CUresult {ip.get('mover.last_driver_error', 0)}")
    return f"failed moves: {parts}{driver}"


def mover_text(pager: dict) -> str:
    """How fast the CUDA mover moved (counters at the end of the run, model
    load included): bytes per direction over the time its batches were in
    flight, and the pager thread's time inside the driver's advise/prefetch
    calls; "" without the counters."""
    raw, ip = pager.get("raw_end") or {}, pager.get("interposer_end") or {}
    parts = []
    for kind in ("promote", "demote"):
        ns, n = ip.get(f"mover.{kind}_ns", 0), ip.get(f"mover.{kind}_batches", 0)
        moved = raw.get("moves", {}).get(kind, {}).get("bytes", 0)
        if ns and n and moved:
            parts.append(f"{kind}s {P.human(moved)} in {n} batches, {moved / ns:.1f} GB/s in flight")
    if not parts:
        return ""
    issue = ip.get("mover.issue_ns", 0)
    return f"mover: {'; '.join(parts)}; pager thread in advise/prefetch calls {issue / 1e9:.2f} s"


def turn_pager(prev: dict, cur: dict) -> Optional[dict]:
    """What the pager did between two snapshots (`e2e_worker.pager_snapshot`)
    taken after consecutive turns: bytes and moves per kind, failed moves per
    kind, faults, stall, the mover's time per direction and inside the
    driver's advise/prefetch calls, and HBM residency after. None when either
    snapshot is missing. The first H200 run had only end-of-run counters, so
    no turn's swap could be told from another's."""
    if not (prev and cur and prev.get("available") and cur.get("available")):
        return None

    def diff(a: dict, b: dict) -> dict:
        return {k: b[k] - a.get(k, 0) for k in b if b[k] - a.get(k, 0)}

    pm, cm = prev["raw"].get("moves", {}), cur["raw"].get("moves", {})
    failed = {k: int(v.get("failed", 0)) - int(pm.get(k, {}).get("failed", 0)) for k, v in cm.items()}
    pi, ci = prev.get("interposer") or {}, cur.get("interposer") or {}
    mover = {k: ci[k] - pi.get(k, 0) for k in ("mover.promote_ns", "mover.demote_ns", "mover.issue_ns",
                                               "mover.batches", "mover.failed_ranges")
             if isinstance(ci.get(k), (int, float)) and ci[k] - pi.get(k, 0)}
    return {"move_bytes": diff(prev["move_bytes"], cur["move_bytes"]),
            "move_count": diff(prev["move_count"], cur["move_count"]),
            "failed": {k: v for k, v in failed.items() if v},
            "faults": cur["faults"] - prev["faults"], "stall_s": (cur["stall_ns"] - prev["stall_ns"]) / 1e9,
            "mover": mover, "hbm_resident_bytes": cur["hbm_resident_bytes"]}


def turn_pager_text(d: Optional[dict]) -> str:
    """One turn's pager work for the turn's line: "" when nothing moved."""
    if not d:
        return ""
    mb = d["move_bytes"]
    parts = [f"{k} {P.human(mb[k])}" for k in ("promote", "demote", "spill", "restore") if mb.get(k)]
    if d["failed"]:
        parts.append("FAILED " + ", ".join(f"{k} {v}" for k, v in d["failed"].items()))
    if not parts:
        return ""
    issue = d["mover"].get("mover.issue_ns", 0)
    return "pager: " + ", ".join(parts) + (f"; in driver calls {issue / 1e9:.2f} s" if issue else "")


def env_name(knob: str) -> str:
    return "KVPAGER_" + knob.replace(".", "_").upper()


def pager_settings(mode: str, plan: P.Plan, safe: dict, args: argparse.Namespace) -> Dict[str, str]:
    """KVPAGER_* settings of a preload mode. Only knob names kvpager knows: it
    refuses unknown KVPAGER_* variables."""
    s: Dict[str, str] = {}
    if mode != "hbm-preload":
        s["hbm_budget"] = P.knob_bytes(plan.budget_bytes)
        s["high_watermark"] = str(P.PAGER_HIGH_WATERMARK)  # what the default budget was sized for
    # hbm-preload: no budget, so the pager takes the most the device offers
    # (90 % of its free memory, far above the footprint the safety rule
    # allows). The managed ceiling is not a budget it accepts: it is above
    # that, and a pager refusing its budget is off -- the mode then measured
    # pass-through hooks, not the pager (the worker now refuses to run so).
    s["cuda.managed_limit"] = P.knob_bytes(safe["limit_bytes"])  # the ceiling, below the card's free memory
    if mode == "kvpager-nvme":
        host = parse_size(args.nvme_host_capacity, "--nvme-host-capacity") if args.nvme_host_capacity \
            else max(plan.session_kv_bytes, plan.kv_total_bytes // 4)
        s["host_capacity"] = P.knob_bytes(host)
        s["spill_idle"] = args.nvme_spill_idle
        s["store_dir"] = args.nvme_store
    for kv in args.set or []:
        if "=" not in kv:
            raise UsageError(f"--set {kv}: expected KEY=VALUE (a kvpager knob, e.g. prefetch_depth=8)")
        k, v = kv.split("=", 1)
        s[k.strip()] = v.strip()
    return {env_name(k): v for k, v in s.items()}


@dataclasses.dataclass
class Launch:
    mode: str
    argv: List[str]
    env_set: Dict[str, str]       # what this mode adds to the environment
    preload: Optional[str]        # the library, or why there is none
    skipped: Optional[str] = None


def allocator_env(env: Dict[str, str]) -> Dict[str, str]:
    """PyTorch's allocator settings for every GPU worker: the classic caching
    allocator (cudaMalloc segments). With expandable_segments its memory comes
    from cuMemCreate/cuMemMap, which kvpager passes through unpaged, and the
    modes would no longer run the same allocator. Other settings are kept.
    Both names: PYTORCH_ALLOC_CONF since 2.9, PYTORCH_CUDA_ALLOC_CONF before."""
    out = {}
    for name in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"):
        items = [i.strip() for i in env.get(name, "").split(",")
                 if i.strip() and not i.strip().lower().startswith("expandable_segments")]
        out[name] = ",".join(items + ["expandable_segments:False"])
    return out


def determinism_env(deterministic: bool) -> Dict[str, str]:
    """cuBLAS's setting for bitwise-reproducible results (PyTorch's reproducibility
    notes; it must be in the environment before cuBLAS starts). Two all-in-HBM runs
    of the same 8B workload on an H200 (2026-12-04) disagreed after a dozen tokens
    without it, and token identity then cannot tell placement from rounding."""
    return {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"} if deterministic else {}


def plan_launch(mode: str, plan: P.Plan, safe: dict, args, spec_path: str, result_path: str,
                lib: Optional[str], kvbin: Optional[str], use_run: bool) -> Launch:
    python = args.python or sys.executable
    worker = [python, AGENTS, "--worker-spec", spec_path, "--worker-mode", mode, "--worker-result", result_path]
    if kvbin:
        worker += ["--worker-kvpager-bin", kvbin]
    alloc = dict(allocator_env(os.environ), **determinism_env(not getattr(args, "nondeterministic", False))) \
        if plan.device == "cuda" else {}
    if mode not in PRELOAD_MODES:
        return Launch(mode, worker, alloc, None)
    if plan.device != "cuda":
        if mode in GPU_ONLY_MODES:
            return Launch(mode, worker, {}, None, skipped="GPU only: the preload has nothing to page on a CPU")
        return Launch(mode, worker, {}, "none: libkvpager.so pages GPU memory only; on the CPU this mode keeps "
                      "every session without it")
    if not lib:
        return Launch(mode, worker, {}, None, skipped=(
            "libkvpager.so not found (build it: cmake --build build/default --target kvpager_preload, "
            "or pass --libkvpager PATH)"))
    env_set = dict(alloc, **pager_settings(mode, plan, safe, args))
    if use_run:
        return Launch(mode, [kvbin, "run", "--"] + worker, env_set, lib)
    env_set = dict(env_set, LD_PRELOAD=lib)
    return Launch(mode, worker, env_set, lib)


def run_worker_process(launch: Launch, quiet: bool, log) -> Tuple[int, List[str], float]:
    env = clean_env(preload=launch.mode in PRELOAD_MODES)
    env.update(launch.env_set)
    line = " ".join(f"{k}={shlex.quote(v)}" for k, v in launch.env_set.items())
    log(f"[{launch.mode}] $ {line + ' ' if line else ''}{' '.join(shlex.quote(a) for a in launch.argv)}")
    t0 = time.monotonic()
    proc = subprocess.Popen(launch.argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=REPO)
    tail: List[str] = []
    assert proc.stdout is not None
    for raw in proc.stdout:
        text = raw.rstrip("\n")
        tail = (tail + [text])[-60:]
        if not quiet:
            log(f"[{launch.mode}] {text}")
    rc = proc.wait()
    return rc, tail, time.monotonic() - t0


# =========================================================================== metrics


def summarize(turns: List[dict], sessions: int) -> dict:
    resumed = [t for t in turns if t["kind"] == "resumed"]
    first = [t for t in turns if t["kind"] == "first"]
    kept = [t["ttft_s"] for t in resumed if not t["recomputed"]]
    recomputed = [t["ttft_s"] for t in resumed if t["recomputed"]]
    dec_tokens = sum(len(t["tokens"]) - 1 for t in turns)
    dec_time = sum(t["decode_s"] for t in turns)
    touched = {t["session"] for t in turns if t["recomputed"]}
    return {
        "ttft_resumed_p50_s": P.percentile([t["ttft_s"] for t in resumed], 50),
        "ttft_resumed_p99_s": P.percentile([t["ttft_s"] for t in resumed], 99),
        "ttft_resumed_kept_p50_s": P.percentile(kept, 50),
        "ttft_resumed_recomputed_p50_s": P.percentile(recomputed, 50),
        "ttft_first_p50_s": P.percentile([t["ttft_s"] for t in first], 50),
        "decode_tok_s": dec_tokens / dec_time if dec_time > 0 else None,
        "decode_tokens": dec_tokens,
        "sessions": sessions,
        "sessions_without_recompute": sessions - len(touched),
        "resumed_turns": len(resumed),
        "resumed_recomputed": sum(1 for t in resumed if t["recomputed"]),
        "oom_retries": sum(t["oom_retries"] for t in turns),
        "prefill_tokens": sum(t["prefill_tokens"] for t in turns),
        "serve_wall_s": sum(t["ttft_s"] + t["decode_s"] for t in turns),
    }


def compare_tokens(ref: List[dict], got: List[dict]) -> dict:
    """Turn-by-turn comparison of two token logs of the same schedule."""
    if [(t["index"], t["session"]) for t in ref] != [(t["index"], t["session"]) for t in got]:
        return {"comparable": False, "identical": False, "why": "the schedules differ"}
    tokens = matching = identical_turns = 0
    first_mismatch = None
    kv_compared = kv_identical = 0
    kv_first_mismatch = None
    for a, b in zip(ref, got):
        da, db = a.get("kv_digest"), b.get("kv_digest")
        if da is not None and db is not None:
            kv_compared += 1
            kv_identical += da == db
            if da != db and kv_first_mismatch is None:
                kv_first_mismatch = {"turn": a["index"], "session": a["session"],
                                     "tokens_identical_so_far": first_mismatch is None and a["tokens"] == b["tokens"]}
        n = max(len(a["tokens"]), len(b["tokens"]))
        same = sum(1 for x, y in zip(a["tokens"], b["tokens"]) if x == y)
        tokens += n
        matching += same
        if a["tokens"] == b["tokens"]:
            identical_turns += 1
        elif first_mismatch is None:
            first_mismatch = {"turn": a["index"], "session": a["session"], "expected": a["tokens"],
                              "got": b["tokens"]}
            # Where they part, and how close to a tie each run's choice was there.
            pos = next((i for i, (x, y) in enumerate(zip(a["tokens"], b["tokens"])) if x != y),
                       min(len(a["tokens"]), len(b["tokens"])))
            first_mismatch["position"] = pos
            for key, t in (("expected_margin", a), ("got_margin", b)):
                m = t.get("margins") or []
                first_mismatch[key] = m[pos] if pos < len(m) else None
    return {"comparable": True, "identical": identical_turns == len(ref), "turns": len(ref),
            "identical_turns": identical_turns, "tokens": tokens, "matching_tokens": matching,
            "matching_share": matching / tokens if tokens else None, "first_mismatch": first_mismatch,
            "kv_turns_compared": kv_compared, "kv_identical_turns": kv_identical,
            "kv_first_mismatch": kv_first_mismatch}


def mismatch_text(m: dict) -> str:
    """Where two token logs first part, with each choice's lead over its
    runner-up logit there (a lead near zero: a near-tie, which a last-bit
    difference in the arithmetic can flip)."""
    def lead(v):
        return "-" if v is None else f"{v:.4g}"
    text = f"first differing token: turn {m['turn']} (session {m['session']}), reply token {m.get('position', '?')}"
    if m.get("expected_margin") is not None or m.get("got_margin") is not None:
        text += (f"; lead of the greedy choice over the runner-up there: reference {lead(m.get('expected_margin'))}, "
                 f"this run {lead(m.get('got_margin'))}")
    return text


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b not in (None, 0) else None


def median_of(runs: List[dict], key: str) -> Optional[float]:
    vals = [r["metrics"][key] for r in runs if r["metrics"].get(key) is not None]
    return statistics.median(vals) if vals else None


def analyze(results: Dict[str, List[dict]], device: str = "cuda") -> Tuple[dict, dict]:
    """Ratios (same run) and correctness vs all-in-HBM. Goals are judged on a GPU
    run only: on a CPU no pager is involved and the timings are the harness's."""
    first = {m: runs[0] for m, runs in results.items() if runs}
    ratios: dict = {}
    correctness: dict = {}
    ref = first.get("hbm")
    if ref is not None:
        for m, runs in results.items():
            if m == "hbm":
                for i, r in enumerate(runs[1:], 1):
                    correctness[f"hbm#{i + 1}"] = dict(compare_tokens(ref["turns"], r["turns"]), must_be_identical=True)
                continue
            for i, r in enumerate(runs):
                name = m if i == 0 else f"{m}#{i + 1}"
                correctness[name] = compare_tokens(ref["turns"], r["turns"])
                correctness[name]["must_be_identical"] = m in EXACT_VS_HBM
    rec = first.get("recompute")
    for m in ("kvpager", "kvpager-nvme"):
        got = first.get(m)
        if rec is None or got is None:
            continue
        # The turns recompute mode had to re-prefill, served by the pager instead.
        idx = {t["index"] for t in rec["turns"] if t["kind"] == "resumed" and t["recomputed"]}
        rec_ttft = [t["ttft_s"] for t in rec["turns"] if t["index"] in idx]
        got_ttft = [t["ttft_s"] for t in got["turns"] if t["index"] in idx]
        key = "ttft_speedup_vs_recompute" if m == "kvpager" else "nvme_ttft_speedup_vs_recompute"
        ratios[key] = {
            "turns": len(idx),
            "p50": ratio(P.percentile(rec_ttft, 50), P.percentile(got_ttft, 50)),
            "p99": ratio(P.percentile(rec_ttft, 99), P.percentile(got_ttft, 99)),
            "all_resumed_p50": ratio(rec["metrics"]["ttft_resumed_p50_s"], got["metrics"]["ttft_resumed_p50_s"]),
            "note": "recompute-mode TTFT / this mode's TTFT on the turns recompute mode re-prefilled",
        }
    if "kvpager" in first and ref is not None:
        ratios["decode_ratio_vs_hbm"] = ratio(first["kvpager"]["metrics"]["decode_tok_s"],
                                              ref["metrics"]["decode_tok_s"])
    if "hbm-preload" in results and "hbm" in results:
        a, b = results["hbm"], results["hbm-preload"]
        dec = ratio(median_of(a, "decode_tok_s"), median_of(b, "decode_tok_s"))
        wall = ratio(median_of(b, "serve_wall_s"), median_of(a, "serve_wall_s"))
        ratios["preload_overhead"] = {
            "decode": None if dec is None else dec - 1.0,
            "serve_wall": None if wall is None else wall - 1.0,
            "runs_each": min(len(a), len(b)),
            "note": "median over runs; hbm-preload vs hbm, both with every session in HBM",
        }
    goals = {}
    t = ratios.get("ttft_speedup_vs_recompute", {})
    if t.get("p50") is not None:
        goals["ttft_speedup_vs_recompute"] = {"goal": f">= {GOALS['ttft_speedup_vs_recompute']:g}x",
                                              "value": t["p50"], "met": t["p50"] >= GOALS["ttft_speedup_vs_recompute"]}
    if ratios.get("decode_ratio_vs_hbm") is not None:
        v = ratios["decode_ratio_vs_hbm"]
        goals["decode_ratio_vs_hbm"] = {"goal": f">= {GOALS['decode_ratio_vs_hbm']:g}x", "value": v,
                                        "met": v >= GOALS["decode_ratio_vs_hbm"]}
    o = ratios.get("preload_overhead", {})
    if o.get("decode") is not None:
        v = max(o["decode"], o["serve_wall"] or 0.0)
        goals["preload_overhead"] = {"goal": f"< {GOALS['preload_overhead']:.0%}", "value": v,
                                     "met": v < GOALS["preload_overhead"]}
    n = ratios.get("nvme_ttft_speedup_vs_recompute", {})
    if n.get("p50") is not None and n["p50"] < 1.0:
        ratios["nvme_note"] = ("the NVMe tier is slower than recompute on this machine (%.2fx): the pager's "
                               "load-vs-recompute choice must prefer recompute here" % n["p50"])
    if device != "cuda":
        goals = {}
        ratios["note"] = ("CPU run: no pager is involved (the preload is GPU-only), so these ratios show that the "
                          "harness works, not how fast kvpager is; the goals are judged on the GPU run")
    ratios["goals"] = goals
    return ratios, correctness


PAGED_MODES = ("kvpager", "kvpager-nvme")


def not_paged(pager: Optional[dict], plan: dict) -> Optional[str]:
    """Why a kvpager mode's numbers would not show paging, or None.

    Tokens equal to all-in-HBM prove nothing by themselves: if the pager held
    none of the KV (PyTorch with expandable_segments maps memory with
    cuMemCreate, which kvpager passes through) the mode is all-in-HBM under
    another name."""
    if not pager or not pager.get("available"):
        return f"cannot tell whether the pager paged anything ({(pager or {}).get('why', 'no pager statistics')})"
    end = pager.get("end", {})
    held = sum(int(end.get(k, 0)) for k in ("hbm_resident_bytes", "host_resident_bytes", "nvme_resident_bytes"))
    if held <= plan["budget_bytes"]:
        return (f"the pager held {held} bytes, not more than the budget {plan['budget_bytes']}: nothing was "
                "oversubscribed (did PyTorch allocate outside cuMemAlloc? each run records its allocator_conf)")
    moved = pager.get("delta", {}).get("move_bytes", {})
    if not any(int(v) > 0 for v in moved.values()):
        return "the pager moved no bytes while serving: the parked sessions never left HBM"
    return None


def kv_same(c: dict) -> bool:
    """Whether every turn's KV digest agreed (True where none were compared: older result files)."""
    return c.get("kv_first_mismatch") is None


def check(report: dict) -> List[str]:
    """What --check asserts; returns the failures."""
    bad: List[str] = []
    plan = report["plan"]
    n = plan["workload"]["sessions"]
    for m in report["modes_requested"]:
        info = report["runs"].get(m, {})
        if info.get("skipped"):
            if plan["device"] == "cuda":  # on a GPU every requested mode must run
                bad.append(f"mode {m} skipped: {info['skipped']}")
            continue
        if info.get("rc") != 0:
            bad.append(f"mode {m} failed (exit {info.get('rc')})")
            continue
        for r in report["modes"].get(m, []):
            missing = [f for f in RESULT_FIELDS if f not in r] + [f for f in METRIC_FIELDS if f not in r["metrics"]]
            if missing:
                bad.append(f"mode {m}: result lacks {missing}")
                continue
            mt = r["metrics"]
            if len(r["turns"]) != len(report["schedule"]):
                bad.append(f"mode {m}: {len(r['turns'])} turns, the schedule has {len(report['schedule'])}")
            if m != "recompute" and mt["resumed_recomputed"] != 0:
                bad.append(f"mode {m}: {mt['resumed_recomputed']} resumed turns recomputed, expected none")
            if m != "recompute" and mt["sessions_without_recompute"] != n:
                bad.append(f"mode {m}: {mt['sessions_without_recompute']} of {n} sessions without recompute")
            if m == "recompute" and plan["resident_sessions"] < n and mt["resumed_recomputed"] == 0:
                bad.append("mode recompute: the budget holds fewer sessions than there are, yet nothing was "
                           "recomputed")
            if r["device"] == "cuda" and m in PRELOAD_MODES and not r["preload"]["loaded"]:
                bad.append(f"mode {m}: libkvpager.so was not loaded in the worker")
            elif r["device"] == "cuda" and m in PRELOAD_MODES and m not in PAGED_MODES and \
                    not (r.get("pager") or {}).get("available"):
                # Loaded is not running: a refused setting turns the pager off and every
                # CUDA call passes through, which measures nothing (the worker's log says why).
                bad.append(f"mode {m}: the pager did not run in the worker "
                           f"({(r.get('pager') or {}).get('why', 'no pager statistics')})")
            if r["device"] == "cuda" and m in PAGED_MODES:
                why = not_paged(r.get("pager"), plan)
                if why:
                    bad.append(f"mode {m}: {why}")
    backends = {r["backend"].get("backend") for rs in report["modes"].values() for r in (rs or [])
                if isinstance(r.get("backend"), dict)}
    if len(backends) > 1:  # e.g. transformers failed in one worker and it fell back to the native decoder
        bad.append(f"modes ran on different model backends ({', '.join(sorted(map(str, backends)))}): see the "
                   "backend notes")
    digests = {r["backend"].get("weights_digest") for rs in report["modes"].values() for r in (rs or [])
               if isinstance(r.get("backend"), dict) and r["backend"].get("weights_digest") is not None}
    if len(digests) > 1:  # same seed, same model: anything else makes the token comparison meaningless
        bad.append(f"modes built different weights (digests {sorted(digests)})")
    repro = [c for name, c in report["correctness"].items() if name.startswith("hbm#")]
    if any(c.get("comparable") and not (c.get("identical") and kv_same(c)) for c in repro):
        bad.append("all-in-HBM is not reproducible: two runs of it differ, so token identity cannot tell the "
                   "pager's placement from rounding (is the arithmetic deterministic? see 'determinism' in each "
                   "run)")
    for name, c in report["correctness"].items():
        if c.get("must_be_identical") and not c.get("identical"):
            bad.append(f"{name}: tokens differ from all-in-HBM ({c.get('why') or c.get('first_mismatch')})")
        elif c.get("must_be_identical") and not kv_same(c):
            bad.append(f"{name}: equal tokens, but the KV cache differs from all-in-HBM's after turn "
                       f"{c['kv_first_mismatch']['turn']} (session {c['kv_first_mismatch']['session']})")
        if not c.get("comparable", False):
            bad.append(f"{name}: token log not comparable with all-in-HBM ({c.get('why')})")
    if "recompute" in report["modes"] and "recompute" not in report["correctness"] and "hbm" in report["modes"]:
        bad.append("recompute: no matching share against all-in-HBM")
    if not report["safety"]["ok"]:
        bad.append("safety rule: footprint above the managed ceiling")
    return bad


# =========================================================================== human summary


def fmt_s(v: Optional[float]) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"


def fmt_x(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}x"


def summary_text(report: dict) -> str:
    plan = report["plan"]
    wl = plan["workload"]
    dev = report["device"]
    lines = []
    where = (f"{dev.get('name')} ({P.human(dev.get('total_bytes', 0))}, driver {dev.get('driver')}, CUDA "
             f"{dev.get('cuda_runtime')})" if plan["device"] == "cuda" else "CPU (no GPU: the preload is GPU-only)")
    lines.append(f"kvpager e2e: {where}; torch {dev.get('torch')}, Python {dev.get('python')}")
    backends = {r[0]["backend"]["backend"] + (": " + r[0]["backend"]["note"] if r[0]["backend"]["note"] else "")
                for r in report["modes"].values() if r}
    for b in sorted(backends):
        lines.append(f"model: preset {plan['spec']['name']}, {plan['dtype']}, backend {b}")
    lines.append(f"workload: {wl['sessions']} sessions x {wl['context']}-token context, tool results "
                 f"{wl['tool_min']}-{wl['tool_max']} tokens, {wl['reply']}-token replies, {wl['rr_rounds']} "
                 f"round-robin rounds + {wl['random_turns']} random turns, seed {wl['seed']}")
    lines.append("safety: " + report["safety_text"])
    lines.append("")
    head = (f"{'mode':<13} {'resumed TTFT p50':>16} {'p99':>10} {'first TTFT':>11} {'decode tok/s':>13} "
            f"{'sessions kept':>13} {'recomputed':>10}  preload")
    lines.append(head)
    for m in report["modes_requested"]:
        info = report["runs"].get(m, {})
        if info.get("skipped"):
            lines.append(f"{m:<13} skipped: {info['skipped']}")
            continue
        if info.get("rc") != 0:
            lines.append(f"{m:<13} FAILED (exit {info.get('rc')}): {' | '.join(info.get('tail', [])[-3:])}")
            continue
        r = report["modes"][m][0]
        mt = r["metrics"]
        dec = mt["decode_tok_s"]
        lines.append(f"{m:<13} {fmt_s(mt['ttft_resumed_p50_s']):>16} {fmt_s(mt['ttft_resumed_p99_s']):>10} "
                     f"{fmt_s(mt['ttft_first_p50_s']):>11} {('-' if dec is None else f'{dec:.1f}'):>13} "
                     f"{mt['sessions_without_recompute']:>6} of {mt['sessions']:<4} "
                     f"{mt['resumed_recomputed']:>4} of {mt['resumed_turns']:<3}  {r['preload']['what']}")
    pagers = [(m, runs[0]["pager"]) for m, runs in report["modes"].items() if runs and runs[0]["pager"]]
    for m, pg in pagers:
        if pg.get("available"):
            d = pg.get("delta", {})
            moved = ", ".join(f"{k} {P.human(v)}" for k, v in d.get("move_bytes", {}).items() if v)
            acc = d.get("prefetch_accuracy")
            lines.append(f"pager ({m}): moved {moved or 'nothing'}; prefetch accuracy "
                         f"{'-' if acc is None else f'{acc:.1%}'}; hit rate "
                         f"{'-' if d.get('hit_rate') is None else format(d['hit_rate'], '.1%')}; HBM at end "
                         f"{P.human(pg.get('end', {}).get('hbm_resident_bytes', 0))}")
            for extra in (failed_moves_text(pg), mover_text(pg)):
                if extra:
                    lines.append(f"pager ({m}): {extra}")
        else:
            lines.append(f"pager ({m}): no statistics ({pg.get('why')})")
    lines.append("")
    rt = report["ratios"]
    t = rt.get("ttft_speedup_vs_recompute")
    if t:
        lines.append(f"kvpager vs recompute, resumed-turn TTFT on the {t['turns']} turns recompute re-prefilled: "
                     f"p50 {fmt_x(t['p50'])}, p99 {fmt_x(t['p99'])} (goal >= 10x for host-resident sessions at "
                     f"32K on a GPU)")
    t = rt.get("nvme_ttft_speedup_vs_recompute")
    if t:
        lines.append(f"kvpager-nvme vs recompute, same turns: p50 {fmt_x(t['p50'])}, p99 {fmt_x(t['p99'])}")
    if rt.get("nvme_note"):
        lines.append(rt["nvme_note"])
    if rt.get("decode_ratio_vs_hbm") is not None:
        lines.append(f"kvpager vs all-in-HBM decode throughput: {fmt_x(rt['decode_ratio_vs_hbm'])} (goal >= 0.8x)")
    o = rt.get("preload_overhead")
    if o:
        lines.append(f"preload overhead, everything fits: decode {o['decode']:+.2%}, serving wall "
                     f"{o['serve_wall']:+.2%} (median of {o['runs_each']} run(s) each; goal < 2%)")
    elif plan["device"] != "cuda":
        lines.append("preload overhead: not measured (the preload is GPU-only)")
    if rt.get("note"):
        lines.append(rt["note"])
    for name, c in report["correctness"].items():
        if not c.get("comparable"):
            lines.append(f"tokens {name} vs all-in-HBM: not comparable ({c.get('why')})")
        elif c.get("must_be_identical"):
            kv = (f"; KV identical after {c['kv_identical_turns']} of {c['kv_turns_compared']} turns"
                  if c.get("kv_turns_compared") else "")
            lines.append(f"tokens {name} vs all-in-HBM: {'identical' if c['identical'] else 'DIFFERENT'} "
                         f"({c['identical_turns']} of {c['turns']} turns, {c['matching_tokens']} of {c['tokens']} "
                         f"tokens{kv})")
            if not c["identical"] and c.get("first_mismatch"):
                lines.append("  " + mismatch_text(c["first_mismatch"]))
        else:
            lines.append(f"tokens {name} vs all-in-HBM: {c['matching_share']:.1%} of tokens match "
                         f"({c['identical_turns']} of {c['turns']} turns identical; re-prefill may differ in the "
                         f"last bits)")
    if report.get("check") is not None:
        lines.append("check: " + ("passed" if not report["check"] else "FAILED: " + "; ".join(report["check"])))
    return "\n".join(lines)


# =========================================================================== orchestrator


def reference_runs(args: argparse.Namespace, device: str, modes: List[str]) -> int:
    """Runs of all-in-HBM: --reference-runs, else 2 on a GPU when --check compares a mode bit for bit."""
    if "hbm" not in modes:
        return 0
    if getattr(args, "reference_runs", None) is not None:
        return args.reference_runs
    return 2 if device == "cuda" and args.check and any(m in EXACT_VS_HBM for m in modes) else 1


def run_all(args: argparse.Namespace) -> int:
    out_stream = sys.stderr if args.json else sys.stdout

    def log(msg: str) -> None:
        print(msg, file=out_stream, flush=True)

    python = args.python or sys.executable
    probe = probe_device(python)
    device = args.device
    if device == "auto":
        device = "cuda" if probe.get("cuda") else "cpu"
    if device == "cuda" and not probe.get("cuda"):
        raise UsageError(f"--device cuda: {python}'s torch sees no GPU")
    spec = resolve(args, device)
    plan = plan_from(spec)
    safe = safety(plan, probe, parse_size(args.reserve, "--reserve") if args.reserve else None)
    stext = safety_text(plan, safe)
    log("kvpager e2e: " + stext)
    if not safe["ok"]:
        raise UsageError(
            f"refusing to start: the managed footprint {P.human(plan.footprint_bytes)} exceeds "
            f"{safe['what']} {P.human(safe['free_bytes'])} less the reserve {P.human(safe['reserve_bytes'])}. "
            "Lower --sessions or --context, or use a smaller --preset; the budget B is what should be small")
    modes = [m.strip() for m in args.modes.split(",")] if args.modes is not None else list(DEFAULT_MODES[device])
    for m in modes:
        if m not in ALL_MODES:
            raise UsageError(f"--modes: unknown mode '{m}' (known: {', '.join(ALL_MODES)})")
    if len(set(modes)) != len(modes):
        raise UsageError(f"--modes {args.modes}: a mode is named twice")
    if args.overhead_repeats < 1:
        raise UsageError("--overhead-repeats must be at least 1")
    if getattr(args, "reference_runs", None) is not None and args.reference_runs < 1:
        raise UsageError("--reference-runs must be at least 1")

    lib = find_built(args.libkvpager, "cuda", "libkvpager.so")
    if args.libkvpager and not lib:
        raise UsageError(f"--libkvpager {args.libkvpager}: no such file")
    kvbin = find_built(args.kvpager_bin, "tools", "kvpager") or (None if args.kvpager_bin else shutil.which("kvpager"))
    if args.kvpager_bin and not kvbin:
        raise UsageError(f"--kvpager-bin {args.kvpager_bin}: no such file")
    use_run = device == "cuda" and has_subcommand(kvbin, "run") and not args.no_kvpager_run
    run_dir = tempfile.mkdtemp(prefix="kvpager-e2e-")
    spec_path = os.path.join(run_dir, "spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)

    # hbm and hbm-preload alternate when repeated, so drift hits both alike.
    order: List[str] = []
    pair = [m for m in ("hbm", "hbm-preload") if m in modes]
    for _ in range(args.overhead_repeats if len(pair) == 2 else 1):
        order += pair
    order += [m for m in modes if m not in pair]
    # Extra all-in-HBM runs, last: if two runs of the reference disagree, token
    # identity cannot judge the pager, and the report must say so.
    order += ["hbm"] * max(0, reference_runs(args, device, modes) - order.count("hbm"))

    results: Dict[str, List[dict]] = {}
    runs: Dict[str, dict] = {}
    for i, m in enumerate(order):
        result_path = os.path.join(run_dir, f"{i:02d}-{m}.json")
        la = plan_launch(m, plan, safe, args, spec_path, result_path, lib, kvbin, use_run)
        info = runs.setdefault(m, {"command": [], "env": la.env_set, "preload": la.preload})
        if la.skipped:
            info["skipped"] = la.skipped
            log(f"[{m}] skipped: {la.skipped}")
            continue
        rc, tail, wall = run_worker_process(la, args.quiet, log)
        info["command"].append(" ".join(shlex.quote(a) for a in la.argv))
        info.setdefault("wall_s", []).append(wall)
        info["rc"] = rc if info.get("rc", 0) == 0 else info["rc"]
        if rc != 0:
            info["tail"] = tail
            log(f"[{m}] FAILED with exit status {rc}")
            continue
        with open(result_path) as f:
            results.setdefault(m, []).append(json.load(f))

    ratios, correctness = analyze(results, device)
    wl = plan.workload
    report = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "device": probe,
        "plan": plan.to_json(),
        "safety": safe,
        "safety_text": stext,
        "schedule": [dataclasses.asdict(t) for t in wl.turns()],
        "modes_requested": modes,
        "runs": runs,
        "modes": results,
        "ratios": ratios,
        "correctness": correctness,
        "check": None,
    }
    if args.check:
        report["check"] = check(report)
    text = summary_text(report)
    report["summary"] = text
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    if args.json:
        print(json.dumps(report, indent=1))
    log("")
    log(text)
    if args.out:
        log(f"(JSON: {args.out})")
    if args.keep_run_dir:
        log(f"(worker files: {run_dir})")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    if report["check"]:
        return 1
    failed = [m for m, i in runs.items() if not i.get("skipped") and i.get("rc") != 0]
    return 1 if failed else 0
