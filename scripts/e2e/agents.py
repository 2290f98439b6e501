#!/usr/bin/env python3
"""Agent sessions with long contexts, served by a plain PyTorch loop, in three modes.

N sessions each build a long context with a first prefill; then, round after
round, a session gets a tool result of a few hundred tokens and answers with a
short greedy reply. The same schedule runs as:

  recompute    PyTorch held to a budget B: sessions that do not fit are dropped
               and re-prefilled on their next turn (what engines do at the wall)
  kvpager      every session kept, under `kvpager run` / LD_PRELOAD=libkvpager.so
               with the pager's HBM budget B (GPU); the preload is GPU-only
  hbm          all-in-HBM: a budget large enough for everything (the ceiling)
  (GPU extras: hbm-preload for the preload's overhead when everything fits,
   kvpager-nvme with a small host tier so idle sessions spill to NVMe)

and reports resumed-turn TTFT p50/p99, decode tokens/s, sessions served without
recompute, the pager's bytes moved and prefetch accuracy, the ratios between the
modes, and whether every token matches all-in-HBM. See docs/e2e.md.

Examples:
  /usr/bin/python3 scripts/e2e/agents.py --device cpu --preset tiny --check
  python3 scripts/e2e/agents.py --preset small --out /tmp/small.json
  python3 scripts/e2e/agents.py --crosscheck          # native decoder == transformers
Exit status: 0 ok, 1 a mode failed or --check failed, 2 bad usage or refused
(the safety rule), 77 --crosscheck without transformers.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import e2e_harness as H  # noqa: E402
import e2e_plan as P  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agents.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Presets: " + "; ".join(
                                    f"{k}: {s.layers} layers, hidden {s.hidden}, {s.heads} heads / {s.kv_heads} KV "
                                    f"heads x {s.head_dim}, vocab {s.vocab}" for k, s in P.PRESETS.items()))
    g = p.add_argument_group("model")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    g.add_argument("--preset", choices=sorted(P.PRESETS), help="default: llama3-8b on a GPU, tiny on a CPU")
    g.add_argument("--dtype", choices=("auto", "bfloat16", "float16", "float32"), default="auto",
                   help="auto: bfloat16 on a GPU, float32 on a CPU")
    g.add_argument("--backend", choices=("auto", "transformers", "native"), default="auto",
                   help="auto: transformers when importable, else the self-contained PyTorch decoder")
    g.add_argument("--hf-cache", choices=("static", "dynamic"), default="static",
                   help="transformers cache class per session (static: preallocated, as the native path)")
    g = p.add_argument_group("workload (defaults per preset)")
    g.add_argument("--sessions", type=int)
    g.add_argument("--context", type=int, help="tokens of each session's first prefill")
    g.add_argument("--tool-tokens", metavar="MIN:MAX", help="tool result length range")
    g.add_argument("--reply", type=int, help="tokens generated per turn")
    g.add_argument("--rr-rounds", type=int, help="round-robin rounds after the first prefills")
    g.add_argument("--random-turns", type=int, help="turns in a seeded random order after those")
    g.add_argument("--prefill-chunk", type=int, help="tokens per forward pass when prefilling")
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--nondeterministic", action="store_true",
                   help="leave PyTorch's and cuBLAS's fast nondeterministic kernels on (default: deterministic "
                   "algorithms, so that the modes' tokens can be compared bit for bit)")
    g = p.add_argument_group("memory")
    g.add_argument("--budget", metavar="SIZE", help="B, e.g. 24G (default: weights + workspace + the KV of "
                   "--resident-sessions sessions)")
    g.add_argument("--resident-sessions", type=int, help="sessions the default budget holds")
    g.add_argument("--reserve", metavar="SIZE", help="headroom kept below the card's free memory "
                   "(default: max(3G, 5%% of the card); on a CPU max(1G, 10%% of available memory))")
    g = p.add_argument_group("modes and the pager")
    g.add_argument("--modes", help=f"comma list of {', '.join(H.ALL_MODES)} (default: "
                   f"{','.join(H.DEFAULT_MODES['cuda'])} on a GPU, {','.join(H.DEFAULT_MODES['cpu'])} on a CPU)")
    g.add_argument("--libkvpager", metavar="PATH", help="libkvpager.so (default: build/*/cuda/libkvpager.so)")
    g.add_argument("--kvpager-bin", metavar="PATH", help="the kvpager CLI (default: build/*/tools/kvpager, PATH)")
    g.add_argument("--no-kvpager-run", action="store_true", help="preload with LD_PRELOAD, not `kvpager run`")
    g.add_argument("--set", action="append", metavar="KNOB=VALUE",
                   help="a kvpager knob for the preload modes, passed as KVPAGER_<KNOB> (repeatable)")
    g.add_argument("--overhead-repeats", type=int, default=1, help="runs of hbm and hbm-preload each, alternated")
    g.add_argument("--reference-runs", type=int, help="runs of hbm (default: 2 on a GPU with --check, so that the "
                   "report shows whether all-in-HBM itself is reproducible; else 1)")
    g.add_argument("--nvme-store", default="/var/tmp/kvpager-e2e-store", help="store_dir for kvpager-nvme")
    g.add_argument("--nvme-host-capacity", metavar="SIZE", help="host tier for kvpager-nvme (default: a quarter "
                   "of all sessions' KV)")
    g.add_argument("--nvme-spill-idle", default="1s", help="spill_idle for kvpager-nvme")
    g = p.add_argument_group("output")
    g.add_argument("--out", metavar="FILE", help="write the report (JSON) here")
    g.add_argument("--json", action="store_true", help="print the JSON report on stdout (the log goes to stderr)")
    g.add_argument("--check", action="store_true",
                   help="exit 1 unless every mode ran, results are complete, kvpager tokens equal all-in-HBM")
    g.add_argument("--quiet", action="store_true", help="no per-turn lines")
    g.add_argument("--no-turn-stats", action="store_true",
                   help="preload modes: do not read the pager's counters after every turn (each read is a "
                        "`kvpager status` between turns, outside their timing, that the other modes do not have)")
    g.add_argument("--keep-run-dir", action="store_true", help="keep the workers' files")
    g.add_argument("--python", help="interpreter for the workers (default: this one)")
    g.add_argument("--crosscheck", action="store_true",
                   help="only check the native decoder against transformers on the same weights (tiny preset)")
    # A worker: one mode in this process (started by the orchestrator).
    p.add_argument("--worker-spec", help=argparse.SUPPRESS)
    p.add_argument("--worker-mode", help=argparse.SUPPRESS)
    p.add_argument("--worker-result", help=argparse.SUPPRESS)
    p.add_argument("--worker-kvpager-bin", help=argparse.SUPPRESS)
    return p


def crosscheck(args: argparse.Namespace) -> int:
    try:
        import torch
    except ImportError as e:
        print(f"crosscheck: no torch ({e})", file=sys.stderr)
        return 2
    import e2e_models as M
    if M.transformers_version() is None:
        print("crosscheck skipped: transformers is not importable here", file=sys.stderr)
        return 77
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    spec = P.PRESETS[args.preset or "tiny"]
    r = M.crosscheck(spec, device, "float32", args.seed, args.hf_cache)
    ok = r["tokens_equal"] and r["max_abs_logit_diff"] <= 1e-3 * max(1.0, r["max_abs_logit"])
    print(json.dumps(r, indent=1))
    print(f"crosscheck ({spec.name}, {device}, float32): max |logit difference| {r['max_abs_logit_diff']:.3g} "
          f"of max |logit| {r['max_abs_logit']:.3g}; greedy tokens "
          f"{'equal' if r['tokens_equal'] else 'DIFFERENT'} -> {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.worker_spec:
            import e2e_worker
            return e2e_worker.run_worker(args.worker_spec, args.worker_mode, args.worker_result,
                                         args.worker_kvpager_bin)
        if args.crosscheck:
            return crosscheck(args)
        return H.run_all(args)
    except H.UsageError as e:
        print(f"agents.py: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
