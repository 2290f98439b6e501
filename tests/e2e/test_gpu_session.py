#!/usr/bin/env python3
"""scripts/gpu-session, the one device call of a lent GPU session, without a GPU:
its plan fits the deadline it defaults to, it refuses to run without a GPU, and
with a stand-in `nvidia-smi` (a script on PATH that answers like one) a deadline
too short for a stage skips that stage and says so, instead of starting work that
the device tool would kill half way. Nothing here builds or needs torch."""
import os
import re
import stat
import subprocess
import tarfile
import tempfile
import unittest

import e2e_testlib as L

SESSION = os.path.join(L.REPO, "scripts", "gpu-session")


def run(args, path_prefix=None, timeout=120):
    env = dict(os.environ)
    if path_prefix:
        env["PATH"] = path_prefix + os.pathsep + env.get("PATH", "")
    return subprocess.run([SESSION, *args], capture_output=True, text=True, env=env, timeout=timeout)


def fake_nvidia_smi(directory, gpu):
    """A stand-in nvidia-smi: lists one GPU when gpu is true, else fails as on a machine without one."""
    path = os.path.join(directory, "nvidia-smi")
    with open(path, "w") as f:
        if gpu:
            f.write("#!/bin/sh\necho 'GPU 0: stand-in H200 (UUID: GPU-0)'\n")
        else:
            f.write("#!/bin/sh\necho 'NVIDIA-SMI has failed: no devices (stand-in)' >&2\nexit 9\n")
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)


class GpuSessionTest(unittest.TestCase):
    def test_plan_lists_every_stage_and_fits_the_default_deadline(self):
        r = run(["--plan"])
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = [l.split()[:4] for l in r.stdout.splitlines()[1:] if not l.startswith("E2E_8B")]
        names = [row[0] for row in rows]
        self.assertEqual(names, ["env", "build", "gpu-tests", "bench", "crosscheck", "e2e-8b", "e2e-overhead",
                                 "e2e-nvme"])
        self.assertEqual([row[0] for row in rows if row[3] == "(optional)"], ["e2e-nvme"])
        default = int(re.search(r"DEADLINE=(\d+)", open(SESSION).read()).group(1))
        needs = sum(int(row[2]) for row in rows if row[3] != "(optional)")
        self.assertLessEqual(needs, default, "the stages' minimum times must fit the default deadline")
        self.assertLessEqual(default, 600 - 30, "the device tool runs one command for at most 600 s")
        self.assertIn("--check", r.stdout, "the e2e stage checks kvpager's tokens against all-in-HBM")

    def test_bad_usage_exits_2(self):
        for args in (["--deadline-s", "soon", "--out", "/tmp/x"], ["--bogus"], [], ["--only", "bnech", "--plan"],
                     ["--out"], ["--plan", "--deadline-s"], ["--plan", "--only"]):
            r = run(args)
            self.assertEqual(r.returncode, 2, (args, r.stdout, r.stderr))
            self.assertNotIn("unbound variable", r.stderr)

    def test_without_a_gpu_it_runs_nothing_but_env(self):
        with tempfile.TemporaryDirectory() as d:
            fake_nvidia_smi(d, gpu=False)
            out = os.path.join(d, "out")
            r = run(["--out", out], path_prefix=d)
            self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
            self.assertIn("no GPU here", open(os.path.join(out, "summary.txt")).read())
            self.assertTrue(os.path.exists(os.path.join(out, "env.log")))
            self.assertFalse(os.path.exists(os.path.join(out, "build.log")), "nothing is built without a GPU")

    def test_stages_that_no_longer_fit_are_skipped_and_named(self):
        with tempfile.TemporaryDirectory() as d:
            fake_nvidia_smi(d, gpu=True)
            out = os.path.join(d, "out")
            r = run(["--out", out, "--deadline-s", "15"], path_prefix=d)
            summary = open(os.path.join(out, "summary.txt")).read()
            self.assertEqual(r.returncode, 1, summary)
            self.assertRegex(summary, r"env\s+PASSED")
            for stage in ("build", "gpu-tests", "bench", "crosscheck", "e2e-8b", "e2e-overhead"):
                self.assertRegex(summary, stage + r"\s+SKIPPED: \d+s left of the deadline, it needs \d+s")
            # An optional stage skipped for time says so, and would not fail the session by itself.
            self.assertRegex(summary, r"e2e-nvme\s+SKIPPED \(optional\): \d+s left")
            # The device tool brings back at most 8 files: everything else travels in one archive.
            self.assertEqual(sorted(os.listdir(out)), ["session.tar.gz", "summary.txt"])
            with tarfile.open(os.path.join(out, "session.tar.gz")) as tar:
                names = {os.path.normpath(n) for n in tar.getnames()}
                self.assertIn("env.log", names)
                self.assertIn("summary.txt", names)
                self.assertIn("stand-in H200", tar.extractfile("./env.log").read().decode())

    def test_a_failed_stage_shows_its_log_and_a_skipped_gpu_test_fails(self):
        # A stand-in build stage that fails: its log's last lines are in summary.txt (the device tool
        # returns only the end of the output), and nothing after the build runs.
        with tempfile.TemporaryDirectory() as d:
            fake_nvidia_smi(d, gpu=True)
            cmake = os.path.join(d, "cmake")
            with open(cmake, "w") as f:
                f.write("#!/bin/sh\necho 'stand-in cmake: error: no compiler here' >&2\nexit 3\n")
            os.chmod(cmake, 0o755)
            out = os.path.join(d, "out")
            r = run(["--out", out, "--deadline-s", "400"], path_prefix=d)
            summary = open(os.path.join(out, "summary.txt")).read()
            self.assertEqual(r.returncode, 1, summary)
            self.assertRegex(summary, r"build\s+FAILED \(exit 3\)")
            self.assertIn("---- last lines of build.log ----", summary)
            self.assertIn("stand-in cmake: error: no compiler here", summary)
            self.assertNotRegex(summary, r"gpu-tests\s+(PASSED|FAILED|SKIPPED)")
        stage = open(SESSION).read().split("stage_gpu-tests()", 1)[1].split("\n}", 1)[0]
        self.assertIn("SKIPPED", stage, "a GPU test that skips on a GPU machine must fail the stage")


if __name__ == "__main__":
    unittest.main()
