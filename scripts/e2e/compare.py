#!/usr/bin/env python3
"""Compares the token logs of agents.py reports, turn by turn.

  scripts/e2e/compare.py REPORT.json [REPORT.json ...] [--reference FILE:MODE]

Every mode run in every report is compared with the reference (default: the
first report's all-in-HBM run). Runs must be identical when they do the same
arithmetic on the same plan: the kvpager modes and hbm-preload against hbm, and
any run against another of the same mode, preset, dtype, backend and device
(run-to-run determinism). Recompute runs may differ in the last bits of a
re-prefill: their share of matching tokens is printed. Runs of another plan
(other preset, seed or shape) are listed as not comparable.

Exit status: 0 every required identity holds, 1 one does not, 2 bad usage.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import e2e_harness as H  # noqa: E402


def runs_of(path: str, report: dict):
    for mode, runs in report.get("modes", {}).items():
        for i, r in enumerate(runs):
            label = f"{os.path.basename(path)}:{mode}" + (f"#{i + 1}" if i else "")
            yield label, mode, r


def identity_key(report: dict, r: dict) -> tuple:
    """What must agree for two runs to be required bit-identical."""
    p = report["plan"]
    return (p["spec"]["name"], p["dtype"], json.dumps(p["workload"], sort_keys=True), p["prefill_chunk"],
            r["backend"]["backend"], r["backend"].get("note", ""), report["device"].get("name", "cpu"),
            report["device"].get("torch"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reports", nargs="+")
    ap.add_argument("--reference", metavar="FILE:MODE", help="default: the first report's hbm run")
    args = ap.parse_args(argv)
    loaded = []
    for path in args.reports:
        try:
            with open(path) as f:
                loaded.append((path, json.load(f)))
        except (OSError, ValueError) as e:
            print(f"compare.py: {path}: {e}", file=sys.stderr)
            return 2
    all_runs = [(label, mode, r, rep) for path, rep in loaded for label, mode, r in runs_of(path, rep)]
    if args.reference:
        ref = next((x for x in all_runs if x[0] == args.reference), None)
    else:
        ref = next((x for x in all_runs if x[1] == "hbm"), None)
    if ref is None:
        print(f"compare.py: no reference run {args.reference or '(hbm)'}; runs: "
              f"{', '.join(x[0] for x in all_runs)}", file=sys.stderr)
        return 2
    ref_label, ref_mode, ref_run, ref_report = ref
    failed = 0
    print(f"reference: {ref_label}")
    for label, mode, r, rep in all_runs:
        if label == ref_label:
            continue
        c = H.compare_tokens(ref_run["turns"], r["turns"])
        same_plan = identity_key(rep, r)[:4] == identity_key(ref_report, ref_run)[:4]
        if not c["comparable"] or not same_plan:
            print(f"  {label:<40} not comparable (another plan or schedule)")
            continue
        exact = identity_key(rep, r) == identity_key(ref_report, ref_run) and (
            mode == ref_mode or (ref_mode == "hbm" and mode in H.EXACT_VS_HBM))
        verdict = ("identical" if c["identical"] else "DIFFERENT") if exact else f"{c['matching_share']:.1%} match"
        print(f"  {label:<40} {verdict:<12} {c['identical_turns']}/{c['turns']} turns, "
              f"{c['matching_tokens']}/{c['tokens']} tokens" + ("" if exact else "  (may differ)"))
        if exact and not c["identical"]:
            failed += 1
            m = c["first_mismatch"]
            print(f"    {H.mismatch_text(m)}: expected {m['expected']}, got {m['got']}")
    print("all required identities hold" if not failed else f"{failed} run(s) differ where they must not")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
