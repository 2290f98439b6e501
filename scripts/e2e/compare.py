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

Exit status: 0 every required identity holds (or none applies: said so), 1 one
does not, 2 bad usage: a file that cannot be read or is not an agents.py report
(or lacks what the comparison needs: said what), no reference run, or no run to
compare with it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import e2e_harness as H  # noqa: E402


class NotAReport(Exception):
    """What a file lacks that the comparison needs."""


def need(obj, path: str, kind=object):
    """obj's field at a dotted path, which must be there (and a kind)."""
    v = obj
    for key in path.split("."):
        if not isinstance(v, dict) or key not in v:
            raise NotAReport(f"no {path}")
        v = v[key]
    if not isinstance(v, kind):
        raise NotAReport(f"{path} is not {'a list' if kind is list else 'an object'}")
    return v


def check_report(report) -> None:
    """Raises NotAReport, saying what is missing, unless report has every field compare reads."""
    if not isinstance(report, dict):
        raise NotAReport(f"the file holds a JSON {type(report).__name__}, not an object")
    for path in ("plan.spec.name", "plan.dtype", "plan.workload", "plan.prefill_chunk"):
        need(report, path)
    need(report, "device", dict)
    for mode, runs in need(report, "modes", dict).items():
        if not isinstance(runs or [], list):
            raise NotAReport(f"modes.{mode} is not a list of runs")
        for i, r in enumerate(runs or []):
            where = f"modes.{mode}[{i}]"
            try:
                need(r, "backend.backend")
                for t in need(r, "turns", list):
                    need(t, "index")
                    need(t, "session")
                    need(t, "tokens", list)
            except NotAReport as e:
                raise NotAReport(f"{where}: {e}") from None


def runs_of(path: str, report: dict):
    for mode, runs in report["modes"].items():
        for i, r in enumerate(runs or []):
            label = f"{os.path.basename(path)}:{mode}" + (f"#{i + 1}" if i else "")
            yield label, mode, r


def identity_key(report: dict, r: dict) -> tuple:
    """What must agree for two runs to be required bit-identical."""
    p = report["plan"]
    return (p["spec"]["name"], p["dtype"], json.dumps(p["workload"], sort_keys=True), p["prefill_chunk"],
            r["backend"]["backend"], r["backend"].get("note", ""), report["device"].get("name", "cpu"),
            report["device"].get("torch"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+")
    ap.add_argument("--reference", metavar="FILE:MODE", help="default: the first report's hbm run")
    args = ap.parse_args(argv)
    loaded = []
    for path in args.reports:
        try:
            with open(path) as f:
                report = json.load(f)
            check_report(report)
        except OSError as e:
            print(f"compare.py: {path}: cannot read it: {e.strerror or e}", file=sys.stderr)
            return 2
        except ValueError as e:
            print(f"compare.py: {path}: not JSON: {e}", file=sys.stderr)
            return 2
        except NotAReport as e:
            print(f"compare.py: {path}: not an agents.py report: {e}", file=sys.stderr)
            return 2
        loaded.append((path, report))
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
    failed = compared = required = 0
    print(f"reference: {ref_label}")
    for label, mode, r, rep in all_runs:
        if label == ref_label:
            continue
        c = H.compare_tokens(ref_run["turns"], r["turns"])
        same_plan = identity_key(rep, r)[:4] == identity_key(ref_report, ref_run)[:4]
        if not c["comparable"] or not same_plan:
            print(f"  {label:<40} not comparable (another plan or schedule)")
            continue
        if not c["tokens"]:
            print(f"  {label:<40} no tokens to compare ({c['turns']} turns)")
            continue
        compared += 1
        exact = identity_key(rep, r) == identity_key(ref_report, ref_run) and (
            mode == ref_mode or (ref_mode == "hbm" and mode in H.EXACT_VS_HBM))
        verdict = ("identical" if c["identical"] else "DIFFERENT") if exact else f"{c['matching_share']:.1%} match"
        print(f"  {label:<40} {verdict:<12} {c['identical_turns']}/{c['turns']} turns, "
              f"{c['matching_tokens']}/{c['tokens']} tokens" + ("" if exact else "  (may differ)"))
        required += exact
        if exact and not c["identical"]:
            failed += 1
            m = c["first_mismatch"]
            print(f"    {H.mismatch_text(m)}: expected {m['expected']}, got {m['got']}")
    if not compared:
        print(f"compare.py: nothing compared: no other run of {ref_label}'s plan and schedule", file=sys.stderr)
        return 2
    if failed:
        print(f"{failed} of {required} run(s) differ where they must not")
    elif required:
        print(f"all required identities hold ({required} run(s) identical to {ref_label})")
    else:
        print(f"no run here must be identical to {ref_label}: nothing required to hold")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
