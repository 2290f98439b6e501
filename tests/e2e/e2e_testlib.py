"""Shared bits of the e2e harness tests: paths, and the skip rule for torch."""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.join(REPO, "scripts", "e2e")
AGENTS = os.path.join(SCRIPTS, "agents.py")
SKIP = 77  # ctest: SKIP_RETURN_CODE

sys.path.insert(0, SCRIPTS)


def require_torch():
    """Exit with ctest's skip code, saying why, when this Python has no torch."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        print(f"SKIP: {sys.executable} cannot import torch ({e}); install Debian's python3-torch "
              "(scripts/setup does) to run the e2e harness tests")
        sys.exit(SKIP)
