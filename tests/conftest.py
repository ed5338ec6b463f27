import os
from pathlib import Path

import pytest
import torch


REPO_ROOT = Path(__file__).resolve().parents[1]
# The official parity fixtures ship with the tests (see their README); DAWN_FIXTURES points to another copy.
FIXTURES = Path(os.environ.get("DAWN_FIXTURES", REPO_ROOT / "tests" / "fixtures" / "official"))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"official fixtures not found at {FIXTURES}; set DAWN_FIXTURES to their folder")
    return FIXTURES


@pytest.fixture(autouse=True)
def _deterministic_torch():
    # The fixtures were produced with 2 threads; results of reductions depend on the thread count.
    torch.set_num_threads(2)
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    # Tests that take tens of seconds on the 2-core CI machine (deselect with -m "not slow").
    config.addinivalue_line("markers", "slow: a long end-to-end test (real browser, real generation)")
