"""Every test carries exactly one tier (unit, component, e2e): the conftest check fails collection otherwise, and the
three ``-m`` selections split the suite between them. Runs pytest on throwaway test files against this conftest."""
from pathlib import Path

import pytest

pytestmark = pytest.mark.component

CONFTEST = Path(__file__).with_name("conftest.py")
INI = "[pytest]\nmarkers =\n    unit: u\n    component: c\n    e2e: e\n    gpu: g\n"


def _project(pytester, **files):
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makeini(INI)
    pytester.makepyfile(**files)


def test_an_untiered_or_twice_tiered_test_fails_collection(pytester):
    _project(pytester, test_a="""
import pytest

pytestmark = pytest.mark.unit


def test_fine():
    pass


@pytest.mark.e2e
def test_twice():
    pass
""", test_b="def test_bare():\n    pass\n")
    result = pytester.runpytest_subprocess("-m", "unit")  # checked before -m deselects anything
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*exactly one tier*", "*test_a.py::test_twice: unit + e2e",
                                 "*test_b.py::test_bare: no tier"])


# alike on purpose: each test writes its own small project of marked tests for pytester
def test_a_tier_selects_its_tests_and_no_marker_runs_them_all(pytester):
    _project(pytester, test_a="""
import pytest

pytestmark = pytest.mark.component


def test_c():
    pass
""", test_b="""
import pytest


@pytest.mark.unit
def test_u():
    pass


@pytest.mark.e2e
def test_e():
    pass
""")
    result = pytester.runpytest_subprocess("-m", "e2e", "-v")
    result.stdout.fnmatch_lines(["*::test_e PASSED*", "*1 passed, 2 deselected*"])
    pytester.runpytest_subprocess().assert_outcomes(passed=3)


def test_the_suite_itself_is_tiered(request):
    """The check ran on this session's collection; every collected item here has exactly one tier."""
    from conftest import tier_problems

    assert tier_problems(request.session.items) == []
