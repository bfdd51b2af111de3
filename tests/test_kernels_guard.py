"""The interpreter guard in smollm/kernels/__init__.py: an interpreter run on a Triton/numpy pair that
cannot work (Triton < 3.7 calls int() on a 1-element array, numpy >= 2.4 refuses it) stops with one line."""

import os
import subprocess
import sys

import pytest

from conftest import one_line
from smollm.kernels import interpreter_problem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("triton, numpy", [
    ("3.6.0", "2.5.2"),  # the H200 machine's Python, run on a CPU
    ("3.6.0", "2.4.0"),
    ("3.6.0", "2.4.0rc1"),
    ("3.5.1", "2.4.6"),
    ("3.1.0", "2.4.6"),  # the oldest Triton pyproject.toml allows: the same int() since 3.1
    ("3.6.0+git9844da9", "2.4.6"),  # a PyTorch build of Triton
])
def test_broken_pairs_are_named(triton, numpy):
    problem = interpreter_problem(triton, numpy)
    assert problem is not None
    assert one_line(problem) == problem
    assert f"Triton {triton}'s interpreter cannot run with numpy {numpy}" in problem
    assert "numpy<2.4 or triton>=3.7" in problem


@pytest.mark.parametrize("triton, numpy", [
    ("3.6.0", "2.3.5"),  # what .ci/gpu-versions pins
    ("3.6.0", "1.26.4"),
    ("3.7.0", "2.5.2"),  # fixed: .squeeze() before int()
    ("3.9.0", "2.4.6"),  # the dev venv
    ("10.0.0", "2.5.2"),
    (None, "2.5.2"),  # not installed / unknown: nothing refused on a guess
    ("3.6.0", None),
    ("unknown", "2.5.2"),
])
def test_working_or_unknown_pairs_pass(triton, numpy):
    assert interpreter_problem(triton, numpy) is None


FAKE_VERSIONS = """
import importlib.metadata as m
real = m.version
fake = {"triton": "3.6.0", "numpy": "2.5.2"}
m.version = lambda name: fake[name] if name in fake else real(name)
import smollm.kernels
print("imported")
"""


def _import_with_fake_versions(interpret: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT, "TRITON_INTERPRET": interpret}
    return subprocess.run([sys.executable, "-c", FAKE_VERSIONS], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_an_interpreter_run_on_a_broken_pair_stops_with_one_line():
    out = _import_with_fake_versions("1")
    assert out.returncode == 1, out
    assert "Traceback" not in out.stderr and "imported" not in out.stdout
    assert one_line(out.stderr) == (
        "error: Triton 3.6.0's interpreter cannot run with numpy 2.5.2 (it calls int() on an array, which "
        "numpy >= 2.4 refuses); install numpy<2.4 or triton>=3.7 for CPU runs")


def test_no_check_when_not_interpreting():
    # Compiled kernels (a GPU) never reach the interpreter's int(): the same pair imports fine.
    out = _import_with_fake_versions("0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "imported"


def test_a_pytest_run_on_a_broken_pair_stops_before_collection():
    # conftest's pytest_sessionstart turns the guard's SystemExit into pytest.exit: the reason, no INTERNALERROR.
    code = FAKE_VERSIONS.replace("import smollm.kernels\nprint(\"imported\")\n", "") + (
        "import pytest, sys\n"
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', 'tests/test_swiglu.py']))\n")
    env = {**os.environ, "PYTHONPATH": ROOT, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "Triton 3.6.0's interpreter cannot run with numpy 2.5.2" in text
    assert "INTERNALERROR" not in text and "Traceback" not in text and "passed" not in text
