"""One mode in one process: build the model, serve the schedule, write the result.

The orchestrator starts this (python agents.py --worker-spec ...), under the
preload for the kvpager modes. The serving itself is e2e_server.Server, which
knows nothing of kvpager; this module only sets the process-wide conditions of
the mode, times the turns and, where a pager runs, reads its statistics.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from typing import List, Optional

import e2e_harness as H
import e2e_plan as P


def loaded_preload() -> Optional[str]:
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                if "libkvpager" in line:
                    return line.split()[-1]
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------- pager statistics


def pager_snapshot(kvpager_bin: Optional[str]) -> dict:
    """`kvpager status --pid <self> --json`, if the CLI and the control socket exist."""
    if not kvpager_bin:
        return {"available": False, "why": "no kvpager binary (pass --kvpager-bin)"}
    env = H.clean_env(preload=True)  # the CLI itself must not run under the preload
    try:
        r = subprocess.run([kvpager_bin, "status", "--pid", str(os.getpid()), "--json"], capture_output=True,
                           text=True, env=env, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"available": False, "why": f"kvpager status: {e}"}
    if r.returncode != 0:
        return {"available": False, "why": f"kvpager status exit {r.returncode}: {r.stderr.strip()[-400:]}"}
    try:
        body = json.loads(r.stdout)
    except ValueError as e:
        return {"available": False, "why": f"kvpager status: not JSON ({e})"}
    if isinstance(body, list):
        body = body[0] if body else {}
    stats = body.get("stats", body)
    interposer = body.get("interposer", {})  # libkvpager.so's own counters (mover.*, events_dropped, ...)
    moves = stats.get("moves", {})
    tiers = stats.get("tiers", {})
    return {
        "available": True,
        "move_bytes": {k: int(v.get("bytes", 0)) for k, v in moves.items()},
        "move_count": {k: int(v.get("count", 0)) for k, v in moves.items()},
        "accesses": int(stats.get("accesses", 0)), "hits": int(stats.get("hits", 0)),
        "faults": int(stats.get("faults", 0)), "stall_ns": int(stats.get("stall_ns", 0)),
        "prefetchers": [{"name": p.get("name"), "issued": int(p.get("issued_bytes", 0)),
                         "used": int(p.get("used_bytes", 0)), "wasted": int(p.get("wasted_bytes", 0))}
                        for p in stats.get("prefetchers", [])],
        "hbm_resident_bytes": int(tiers.get("hbm", {}).get("resident_bytes", 0)),
        "host_resident_bytes": int(tiers.get("host", {}).get("resident_bytes", 0)),
        "nvme_resident_bytes": int(tiers.get("nvme", {}).get("resident_bytes", 0)),
        "raw": stats,
        "interposer": interposer,
    }


def pager_delta(before: dict, after: dict, budget: int) -> dict:
    """The serving phase's share of the pager's counters (model load excluded)."""
    if not (before.get("available") and after.get("available")):
        why = after.get("why") if not after.get("available") else before.get("why")
        return {"available": False, "why": why, "start": before, "end": after}
    moves = {k: after["move_bytes"].get(k, 0) - before["move_bytes"].get(k, 0) for k in after["move_bytes"]}
    pb = {p["name"]: p for p in before["prefetchers"]}
    used = wasted = 0
    per = {}
    for p in after["prefetchers"]:
        q = pb.get(p["name"], {"issued": 0, "used": 0, "wasted": 0})
        u, w, i = p["used"] - q["used"], p["wasted"] - q["wasted"], p["issued"] - q["issued"]
        used, wasted = used + u, wasted + w
        per[p["name"]] = {"issued_bytes": i, "used_bytes": u, "wasted_bytes": w,
                          "accuracy": u / (u + w) if u + w else None}
    acc = after["accesses"] - before["accesses"]
    return {
        "available": True,
        "delta": {
            "move_bytes": moves,  # promote host->hbm, demote hbm->host, spill host->nvme, restore nvme->host
            "prefetch_accuracy": used / (used + wasted) if used + wasted else None,
            "prefetchers": per,
            "hit_rate": (after["hits"] - before["hits"]) / acc if acc else None,
            "faults": after["faults"] - before["faults"],
            "stall_s": (after["stall_ns"] - before["stall_ns"]) / 1e9,
        },
        "end": {k: after[k] for k in ("hbm_resident_bytes", "host_resident_bytes", "nvme_resident_bytes")},
        "hbm_within_budget": after["hbm_resident_bytes"] <= budget,
        "raw_end": after["raw"],
        "interposer_end": after.get("interposer", {}),
    }


# --------------------------------------------------------------------------- the worker


def run_worker(spec_path: str, mode: str, result_path: str, kvpager_bin: Optional[str]) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    plan = H.plan_from(spec)
    device = spec["device"]
    quiet = spec.get("quiet", False)

    import torch

    import e2e_models as M
    from e2e_server import Server

    determinism = M.set_deterministic(spec.get("deterministic", True))
    lib = loaded_preload()
    want_preload = mode in H.PRELOAD_MODES and device == "cuda"
    if want_preload and not lib:
        print(f"error: mode {mode} needs libkvpager.so preloaded, and it is not (LD_PRELOAD / kvpager run)")
        return 3
    if not want_preload and lib:
        print(f"error: mode {mode} must run without the preload, and {lib} is loaded")
        return 3
    if mode in H.PRELOAD_MODES and device == "cuda":
        what = f"libkvpager.so, HBM budget {os.environ.get('KVPAGER_HBM_BUDGET', 'auto')}"
    elif mode in H.PRELOAD_MODES:
        what = "none (the preload is GPU-only; every session kept)"
    else:
        what = "none"
    preload = {"loaded": bool(lib), "path": lib, "what": what,
               "settings": {k: v for k, v in os.environ.items() if k.startswith("KVPAGER_")}}

    # What the allocator ran with (the harness sets expandable_segments:False on a
    # GPU: e2e_harness.allocator_env). PYTORCH_ALLOC_CONF is the name since 2.9.
    memory: dict = {"allocator_conf": ",".join(
        v for v in (os.environ.get("PYTORCH_ALLOC_CONF", ""), os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")) if v)}
    if device == "cuda":
        torch.cuda.init()
        free, total = torch.cuda.mem_get_info()
        memory.update(seen_free_bytes=int(free), seen_total_bytes=int(total))
        if not lib:
            # The safety rule again, now: another process may have taken memory
            # since the orchestrator's probe. (Under the preload the free memory
            # seen is the virtual capacity; the managed ceiling guards instead.)
            need = plan.budget_bytes if mode == "recompute" else plan.footprint_bytes
            memory["need_bytes"] = need
            if need > free:
                print(f"error: refusing to start: mode {mode} needs {P.human(need)}, the GPU has "
                      f"{P.human(free)} free")
                return 2
        if mode == "recompute":
            frac = min(1.0, plan.budget_bytes / torch.cuda.get_device_properties(0).total_memory)
            torch.cuda.set_per_process_memory_fraction(frac)
            memory["memory_fraction"] = frac
        print(f"device sees {P.human(free)} free of {P.human(total)}"
              + (" (virtual capacity reported by the preload)" if lib else ""))

    t0 = time.perf_counter()
    backend = M.make_backend(spec["backend"], plan.spec, device, plan.dtype, spec["seed"], spec["hf_cache"],
                             max_positions=max(plan.max_len, 8192))
    build_s = time.perf_counter() - t0
    desc = backend.describe()
    print(f"model: {desc['backend']}{' (' + desc['note'] + ')' if desc['note'] else ''}, "
          f"{desc['params'] / 1e6:.1f} M parameters, built in {build_s:.1f} s")

    # Warm-up on a scratch cache: kernel selection, cuBLAS handles, allocator pools.
    t0 = time.perf_counter()
    n = min(plan.prefill_chunk, plan.max_len // 2)
    scratch = backend.new_cache(plan.max_len)
    tok = backend.feed(scratch, list(range(n)), 0)
    for i in range(3):
        tok = backend.feed(scratch, [tok], n + i)
    del scratch
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    warmup_s = time.perf_counter() - t0

    before = pager_snapshot(kvpager_bin) if lib else None
    if before is not None and kvpager_bin:
        # Under the preload the pager must be running: one that refused its
        # configuration passes every call through, and the mode would measure
        # the hooks alone while claiming to measure the pager.
        if not before.get("available"):
            print(f"error: mode {mode}: no pager is running under the preload ({before.get('why')}); "
                  f"see the kvpager lines above")
            return 3
        cap = int(before["raw"].get("tiers", {}).get("hbm", {}).get("capacity_bytes", 0))
        if mode == "hbm-preload" and cap < plan.footprint_bytes:
            print(f"error: mode {mode}: the pager's HBM budget {P.human(cap)} is below the footprint "
                  f"{P.human(plan.footprint_bytes)}: it would page, not measure the preload's overhead")
            return 3
    wl = plan.workload
    server = Server(backend, plan.max_len, plan.prefill_chunk,
                    kv_capacity_bytes=plan.kv_capacity_bytes if mode == "recompute" else None,
                    cache_bytes=plan.session_kv_bytes)
    turns: List[dict] = []
    last = before
    for t in wl.turns():
        r = server.turn(t.session, wl.tokens(t, plan.spec.vocab), wl.reply)
        held = server.sessions.get(t.session)  # after the turn, outside its timing
        kv_digest = backend.kv_digest(held.cache, held.kv_len) if held is not None else None
        turns.append({"index": t.index, "session": t.session, "kind": t.kind, "order": t.order,
                      "new_tokens": t.new_tokens, "prefill_tokens": r.prefill_tokens, "recomputed": r.recomputed,
                      "dropped": r.dropped, "oom_retries": r.oom_retries, "ttft_s": r.ttft_s,
                      "decode_s": r.decode_s, "tokens": r.tokens, "kv_digest": kv_digest,
                      "margins": [None if m is None else float(f"{m:.6g}") for m in r.margins]})
        if lib and kvpager_bin and spec.get("turn_stats", True):
            # The pager's share of this turn (and of the gap after it), outside
            # its timing; how long the read took is kept: the pager works on
            # meanwhile, a gap the modes without it do not have.
            t1 = time.perf_counter()
            snap = pager_snapshot(kvpager_bin)
            turns[-1]["pager"] = H.turn_pager(last, snap)
            turns[-1]["pager_read_s"] = time.perf_counter() - t1
            last = snap
        if not quiet:
            rate = (len(r.tokens) - 1) / r.decode_s if r.decode_s > 0 else 0.0
            print(f"turn {t.index:3d} session {t.session:2d} {t.order:<6} prefill {r.prefill_tokens:6d} tok "
                  f"TTFT {H.fmt_s(r.ttft_s):>9}  decode {rate:8.1f} tok/s"
                  + (" RECOMPUTED" if r.recomputed else "")
                  + (f" dropped {r.dropped}" if r.dropped else "")
                  + (f"  {H.turn_pager_text(turns[-1].get('pager'))}" if turns[-1].get("pager") else ""), flush=True)
    pager = pager_delta(before, pager_snapshot(kvpager_bin), plan.budget_bytes) if lib else None

    if device == "cuda":
        memory.update(peak_allocated_bytes=int(torch.cuda.max_memory_allocated()),
                      peak_reserved_bytes=int(torch.cuda.max_memory_reserved()),
                      end_reserved_bytes=int(torch.cuda.memory_reserved()))
    metrics = H.summarize(turns, wl.sessions)
    result = {
        "mode": mode, "device": device, "torch": torch.__version__, "backend": desc, "preload": preload,
        "determinism": determinism,
        "params_expected": plan.spec.params(), "build_s": build_s, "warmup_s": warmup_s,
        "plan": {"budget_bytes": plan.budget_bytes, "max_len": plan.max_len,
                 "kv_capacity_bytes": plan.kv_capacity_bytes if mode == "recompute" else None,
                 "session_kv_bytes": plan.session_kv_bytes},
        "memory": memory, "metrics": metrics, "turns": turns, "pager": pager,
    }
    with open(result_path, "w") as f:
        json.dump(result, f)
    mt = metrics
    print(f"done: resumed TTFT p50 {H.fmt_s(mt['ttft_resumed_p50_s'])}, decode "
          f"{mt['decode_tok_s'] or 0:.1f} tok/s, {mt['resumed_recomputed']} of {mt['resumed_turns']} resumed turns "
          f"recomputed")
    return 0
