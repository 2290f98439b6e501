#!/usr/bin/env python3
"""The command line of every executable script in scripts/ and scripts/e2e/,
without building or running anything: --help prints the script's help (its top
comment block, or argparse's for Python) with exit 0, also when started by a
relative path from another directory, and has no side effects; a missing or
bad option value is bad usage (exit 2, naming the option), and the GPU scripts
refuse to start on a machine without a GPU before they build anything.

Side effects are caught with stand-ins on PATH: cmake, ninja, a compiler,
apt-get and the like write to a log when run (and fail); nvidia-smi fails as on
a machine without a GPU. Needs no torch; a few seconds."""
import os
import shutil
import stat
import subprocess
import tempfile
import unittest

import e2e_testlib as L

SCRIPT_DIRS = [os.path.join(L.REPO, "scripts"), L.SCRIPTS]
# Programs that do work (build, install, fuzz, benchmark): --help and bad usage
# must run none of them.
WORKERS = ["cmake", "ninja", "make", "clang++", "clang++-14", "nvcc", "apt-get", "sudo", "fio", "fusermount3"]


def executables():
    out = []
    for d in SCRIPT_DIRS:
        for name in sorted(os.listdir(d)):
            p = os.path.join(d, name)
            if os.path.isfile(p) and os.access(p, os.X_OK):
                out.append(p)
    return out


def help_block(path):
    """The top comment block of a bash script, without the leading "# "."""
    lines = []
    with open(path) as f:
        next(f)  # #!
        for line in f:
            if not line.startswith("#"):
                break
            lines.append(line[1:].rstrip("\n").removeprefix(" "))
    return lines


class Sandbox:
    """An empty working directory and a PATH whose stand-ins log every call."""

    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.cwd = os.path.join(self.tmp.name, "cwd")
        self.bin = os.path.join(self.tmp.name, "bin")
        self.log = os.path.join(self.tmp.name, "calls.log")
        os.mkdir(self.cwd)
        os.mkdir(self.bin)
        for w in WORKERS:
            self._stub(w, f'echo "{w} $*" >>"{self.log}"\nexit 99\n')
        self._stub("nvidia-smi", "echo 'NVIDIA-SMI has failed: no devices (stand-in)' >&2\nexit 9\n")

    def _stub(self, name, body):
        p = os.path.join(self.bin, name)
        with open(p, "w") as f:
            f.write("#!/bin/sh\n" + body)
        os.chmod(p, os.stat(p).st_mode | stat.S_IXUSR)

    def run(self, script, *args):
        """Runs one script; what it did is in calls() and left_behind() until the next run."""
        if os.path.exists(self.log):
            os.remove(self.log)
        shutil.rmtree(self.cwd)
        os.mkdir(self.cwd)
        env = dict(os.environ, PATH=self.bin + os.pathsep + os.environ.get("PATH", ""), PYTHONDONTWRITEBYTECODE="1")
        # By a relative path from another directory: a script that cds before it
        # reads "$0" loses itself.
        return subprocess.run([os.path.relpath(script, self.cwd), *args], cwd=self.cwd, env=env,
                              capture_output=True, text=True, timeout=60)

    def calls(self):
        if not os.path.exists(self.log):
            return ""
        with open(self.log) as f:
            return f.read()

    def left_behind(self):
        return os.listdir(self.cwd)


def untracked():
    return subprocess.run(["git", "-C", L.REPO, "status", "--porcelain", "--untracked-files=all"],
                          capture_output=True, text=True).stdout


class ScriptsCliTest(unittest.TestCase):
    def setUp(self):
        self.box = Sandbox()
        self.addCleanup(self.box.tmp.cleanup)

    def assertNoSideEffects(self, what):
        self.assertEqual(self.box.calls(), "", f"{what} ran a program that does work")
        self.assertEqual(self.box.left_behind(), [], f"{what} left files in the directory it was started from")

    def test_every_script_answers_help(self):
        scripts = executables()
        self.assertGreater(len(scripts), 15)
        before = untracked()
        for s in scripts:
            name = os.path.relpath(s, L.REPO)
            with self.subTest(script=name):
                # argparse answers -h as it does --help: once is enough for Python.
                for flag in ("--help",) if s.endswith(".py") else ("--help", "-h"):
                    r = self.box.run(s, flag)
                    self.assertEqual(r.returncode, 0, f"{name} {flag}: {r.stdout}{r.stderr}")
                    self.assertTrue(r.stdout.strip(), f"{name} {flag} printed nothing on stdout")
                    self.assertNotIn("Traceback", r.stderr)
                    self.assertNoSideEffects(f"{name} {flag}")
                if not s.endswith(".py"):
                    block = help_block(s)
                    self.assertTrue(any(l.strip() for l in block), f"{name} has no top comment block")
                    out = r.stdout.splitlines()
                    self.assertEqual(out, block, f"{name} --help is not its top comment block")
        self.assertEqual(untracked(), before, "--help wrote into the repository")

    def test_a_missing_option_value_is_bad_usage(self):
        cases = [("fuzz-fs", "--time"), ("fuzz-replay", "--time"), ("fuzz-store", "--time"),
                 ("gpu-session", "--out"), ("gpu-session", "--deadline-s"), ("gpu-session", "--only"),
                 ("test-gpu", "--filter"), ("bench-fs", "--dir"), ("bench-store", "--qd"),
                 ("bench-gpu-mover", "--budget-mib"), ("bench-gpu-mover", "--mover-mib"),
                 ("e2e/run-gpu", "--out"), ("e2e/run-gpu", "--stage")]
        for script, opt in cases:
            with self.subTest(script=script, option=opt):
                r = self.box.run(os.path.join(L.REPO, "scripts", script), opt)
                self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
                self.assertIn(f"{os.path.basename(script)}: {opt} wants a value", r.stderr)
                self.assertNotIn("unbound variable", r.stderr)
                self.assertNoSideEffects(f"{script} {opt}")

    def test_fuzz_time_must_be_a_bounded_number_of_seconds(self):
        for script in ("fuzz-fs", "fuzz-replay", "fuzz-store"):
            for value in ("0", "-5", "1.5", ""):
                with self.subTest(script=script, time=value):
                    r = self.box.run(os.path.join(L.REPO, "scripts", script), "--time", value)
                    self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
                    self.assertIn("--time", r.stderr)
                    self.assertNoSideEffects(f"{script} --time {value!r}")

    def test_unknown_arguments_are_bad_usage(self):
        for script in ("fuzz-fs", "fuzz-replay", "fuzz-store", "gpu-session", "test-gpu", "bench-gpu-mover",
                       "e2e/run-gpu", "device-deps", "setup", "readme-knobs"):
            with self.subTest(script=script):
                r = self.box.run(os.path.join(L.REPO, "scripts", script), "--no-such-option")
                self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
                self.assertIn("--no-such-option", r.stderr)
                self.assertNoSideEffects(script)

    def test_gpu_scripts_refuse_to_start_without_a_gpu_before_building(self):
        out = os.path.join(self.box.tmp.name, "run-gpu-out")
        for script, args, status in (("test-gpu", [], 77), ("bench-gpu-mover", [], 2),
                                     ("e2e/run-gpu", ["--out", out], 2)):
            with self.subTest(script=script):
                r = self.box.run(os.path.join(L.REPO, "scripts", script), *args)
                self.assertEqual(r.returncode, status, r.stdout + r.stderr)
                self.assertIn("no GPU here", r.stderr)
                self.assertNoSideEffects(script)
        self.assertFalse(os.path.exists(out), "run-gpu wrote its outputs without a GPU")


if __name__ == "__main__":
    unittest.main(verbosity=2)
