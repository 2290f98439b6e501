#!/usr/bin/env python3
"""scripts/e2e/agents.py end to end on the CPU (tiny model, no preload), as CI
runs it: every default mode runs in its own process, the report carries every
field docs/e2e.md describes, kvpager-mode tokens equal all-in-HBM (checked here
independently of the script's own --check), the small budget really made
recompute mode re-prefill, and the safety rule refuses a footprint above the
limit before any mode starts."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

import e2e_testlib as T

T.require_torch()

ARGS = ["--device", "cpu", "--preset", "tiny", "--quiet"]


def agents(*args, timeout=240):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.pop("LD_PRELOAD", None)
    return subprocess.run([sys.executable, T.AGENTS, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=T.REPO)


class CpuRunTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.out = os.path.join(cls.tmp.name, "tiny.json")
        cls.proc = agents(*ARGS, "--check", "--out", cls.out)
        cls.report = None
        if os.path.exists(cls.out):
            with open(cls.out) as f:
                cls.report = json.load(f)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_run_passes_its_own_check(self):
        self.assertEqual(self.proc.returncode, 0, self.proc.stdout[-3000:] + self.proc.stderr[-3000:])
        self.assertIn("check: passed", self.proc.stdout)
        self.assertEqual(self.report["check"], [])

    def test_every_default_mode_ran_with_complete_results(self):
        r = self.report
        self.assertEqual(r["modes_requested"], ["hbm", "kvpager", "recompute"])
        n = r["plan"]["workload"]["sessions"]
        for m in r["modes_requested"]:
            self.assertEqual(r["runs"][m]["rc"], 0)
            res = r["modes"][m][0]
            for f in ("mode", "device", "backend", "preload", "plan", "memory", "metrics", "turns", "pager"):
                self.assertIn(f, res)
            mt = res["metrics"]
            for f in ("ttft_resumed_p50_s", "ttft_resumed_p99_s", "decode_tok_s", "sessions_without_recompute"):
                self.assertIsNotNone(mt[f], f"{m}.{f}")
            self.assertGreater(mt["ttft_resumed_p99_s"], 0)
            self.assertGreaterEqual(mt["ttft_resumed_p99_s"], mt["ttft_resumed_p50_s"])
            self.assertEqual(len(res["turns"]), len(r["schedule"]))
            self.assertEqual(mt["sessions"], n)
            self.assertEqual(res["backend"]["params"], res["params_expected"])
        self.assertEqual(r["modes"]["kvpager"][0]["metrics"]["sessions_without_recompute"], n)
        self.assertIn("GPU-only", r["modes"]["kvpager"][0]["preload"]["what"])
        self.assertFalse(r["modes"]["kvpager"][0]["preload"]["loaded"])

    def test_kvpager_tokens_equal_all_in_hbm_turn_by_turn(self):
        hbm = self.report["modes"]["hbm"][0]["turns"]
        kv = self.report["modes"]["kvpager"][0]["turns"]
        self.assertEqual([(t["index"], t["session"], t["tokens"]) for t in hbm],
                         [(t["index"], t["session"], t["tokens"]) for t in kv])
        self.assertTrue(all(len(t["tokens"]) == self.report["plan"]["workload"]["reply"] for t in hbm))
        self.assertTrue(self.report["correctness"]["kvpager"]["identical"])

    def test_budget_made_recompute_mode_drop_and_reprefill(self):
        r = self.report
        rec = r["modes"]["recompute"][0]
        self.assertLess(r["plan"]["resident_sessions"], r["plan"]["workload"]["sessions"])
        self.assertGreater(rec["metrics"]["resumed_recomputed"], 0)
        self.assertLess(rec["metrics"]["sessions_without_recompute"], r["plan"]["workload"]["sessions"])
        for t in rec["turns"]:
            if t["recomputed"]:  # a rebuilt session prefills far more than its new prompt
                self.assertGreater(t["prefill_tokens"], r["plan"]["workload"]["context"])
        share = r["correctness"]["recompute"]["matching_share"]
        self.assertTrue(0.0 <= share <= 1.0)
        t = r["ratios"]["ttft_speedup_vs_recompute"]
        self.assertEqual(t["turns"], rec["metrics"]["resumed_recomputed"])
        self.assertIsNotNone(t["p50"])
        self.assertIsNotNone(r["ratios"]["decode_ratio_vs_hbm"])

    def test_safety_numbers_are_reported_and_consistent(self):
        p, s = self.report["plan"], self.report["safety"]
        self.assertEqual(s["footprint_bytes"], p["weight_bytes"] + p["kv_total_bytes"] + p["workspace_bytes"])
        self.assertLessEqual(s["footprint_bytes"], s["limit_bytes"])
        self.assertLess(s["limit_bytes"], s["free_bytes"])
        self.assertIn("footprint", self.proc.stdout)
        self.assertIn("budget B", self.proc.stdout)

    def test_compare_driver_accepts_the_run_and_catches_one_changed_token(self):
        cmp = os.path.join(T.SCRIPTS, "compare.py")
        p = subprocess.run([sys.executable, cmp, self.out], capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("all required identities hold", p.stdout)
        tampered = json.loads(json.dumps(self.report))
        tampered["modes"]["kvpager"][0]["turns"][-1]["tokens"][0] += 1
        path = os.path.join(self.tmp.name, "tampered.json")
        with open(path, "w") as f:
            json.dump(tampered, f)
        p = subprocess.run([sys.executable, cmp, self.out, path], capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("tampered.json:kvpager", p.stdout)
        self.assertIn("DIFFERENT", p.stdout)

    def test_footprint_above_free_memory_is_refused_before_any_mode(self):
        p = agents(*ARGS, "--reserve", "1P")
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("refusing to start", p.stderr)
        self.assertNotIn("[hbm]", p.stdout)

    def test_bad_usage_exits_2_naming_the_flag(self):
        p = agents(*ARGS, "--modes", "hbm,turbo")
        self.assertEqual(p.returncode, 2)
        self.assertIn("--modes", p.stderr)
        p = agents(*ARGS, "--budget", "1K")
        self.assertEqual(p.returncode, 2)
        self.assertIn("--budget", p.stderr)
        # Each refused before any mode runs, naming what is wrong (no traceback).
        for extra, says in ((("--rr-rounds", "-1"), "--rr-rounds -1: must be 0 or more"),
                            (("--random-turns", "-3"), "--random-turns -3"),
                            (("--dtype", "float16"), "--dtype float16"),
                            (("--python", "/nonexistent/python"), "--python /nonexistent/python: cannot run it"),
                            (("--modes", ""), "unknown mode ''"),
                            (("--modes", "hbm,hbm"), "a mode is named twice")):
            p = agents(*ARGS, *extra)
            self.assertEqual(p.returncode, 2, (extra, p.stderr))
            self.assertIn(says, p.stderr)
            self.assertNotIn("Traceback", p.stderr)
            self.assertNotIn("[hbm]", p.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
