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
