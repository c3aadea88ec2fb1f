import os

# Before transformers/diffusers are imported anywhere: no test may touch the network.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# One intra-op thread, inherited by the CLI subprocesses: the tiny models are far too small to gain from threads, and
# two processes x two threads on a 2-core machine made some tests 5-50x slower through contention.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_thread():
    """Every test starts single-threaded and leaves the thread count as it found it (a test or library that
    raises it cannot slow the tests after it): the tiny models gain nothing from threads on 2 shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# every test carries exactly one tier (module-level ``pytestmark`` or per test), so -m unit / component / e2e select
# all of them between them; pytest.ini_options in pyproject.toml registers and describes the markers
TIERS = ("unit", "component", "e2e")

def tier_problems(items) -> list[str]:
    """``"<node id>: <tiers found>"`` for every test with no tier or with more than one."""
    problems = []
    for item in items:
        tiers = [t for t in TIERS if item.get_closest_marker(t) is not None]
        if len(tiers) != 1:
            problems.append(f"{item.nodeid}: {' + '.join(tiers) or 'no tier'}")
    return problems


@pytest.hookimpl(tryfirst=True)  # before -m deselects anything: a deselected test must be tiered too
def pytest_collection_modifyitems(config, items):
    problems = tier_problems(items)
    if problems:
        raise pytest.UsageError("every test needs exactly one tier marker (@pytest.mark.unit, component or e2e, or a "
                                "module-level pytestmark):\n  " + "\n  ".join(problems))
    has_gpu = torch.cuda.is_available()
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
