import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PARITY = SHARED / "spec" / "parity"


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    if not (PARITY / "spectrostream_parity_fixture.npz").is_file():
        pytest.fail(f"parity fixture missing: {PARITY} (CI keeps ../shared beside the checkout)")
    if str(PARITY) not in sys.path:
        sys.path.insert(0, str(PARITY))
    return PARITY


@pytest.fixture(scope="session")
def run_cli():
    """Run ``python -m spectrostream ARGS`` on this checkout's source in a subprocess (one
    OpenMP thread); returns the CompletedProcess with stdout and stderr captured."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")

    def run(*args: object, stdin: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "spectrostream", *map(str, args)],
            input=stdin,
            capture_output=True,
            env=env,
            timeout=300,
            check=False,
        )

    return run
