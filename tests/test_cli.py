"""smollm/cli/: the command lines answer --help and argument errors before torch, transformers,
gradio or triton are imported (they take seconds, tens of seconds on a loaded machine). Each command
runs as a user runs it, in its own process under `python -X importtime`, whose report on stderr lists
every module the process imported."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = {"torch", "transformers", "gradio", "triton"}


def _run(*argv: str) -> tuple[subprocess.CompletedProcess, set[str], list[str]]:
    """(the finished process, the top-level packages it imported, its stderr lines other than the
    import report)."""
    r = subprocess.run([sys.executable, "-X", "importtime", *argv], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env={k: v for k, v in os.environ.items() if k != "PYTHONPROFILEIMPORTTIME"})
    imported, other = set(), []
    for line in r.stderr.splitlines():
        if line.startswith("import time:"):
            name = line.rsplit("|", 1)[1].strip()
            imported.add(name.split(".")[0])
        else:
            other.append(line)
    assert "smollm" in imported, r.stderr[-2000:]  # the report is there: a test that can fail
    return r, imported, other


@pytest.mark.parametrize("argv", [["train.py", "--help"], ["train.py", "plot", "--help"],
                                  ["train.py", "export", "--help"], ["generate.py", "--help"], ["app.py", "--help"],
                                  ["-m", "smollm.prepare", "--help"], ["-m", "smollm.eval", "--help"]])
def test_help_answers_before_the_heavy_imports(argv):
    r, imported, other = _run(*argv)
    assert r.returncode == 0 and r.stdout.startswith("usage: "), r.stdout + "\n".join(other)
    assert not imported & HEAVY, f"{' '.join(argv)} imported {sorted(imported & HEAVY)}"


@pytest.mark.parametrize("argv, start", [
    (["train.py", "--nope"], "train.py: error: unrecognized arguments: --nope"),
    (["train.py", "export", "runs/x"], "train.py export: error: the following arguments are required: out"),
    (["generate.py", "--top-k", "many"], "generate.py: error: argument --top-k: invalid int value: 'many'"),
    # (how argparse lists the choices after it differs between Python versions)
    (["app.py", "--kernels", "cuda"], "app.py: error: argument --kernels: invalid choice: 'cuda'"),
    (["-m", "smollm.eval", "--limit", "3"], "python -m smollm.eval: error: the following arguments are required: --model"),
])
def test_an_argument_error_is_one_line_before_the_heavy_imports(argv, start):
    r, imported, other = _run(*argv)
    assert r.returncode == 2 and r.stdout == ""
    prog = " ".join(argv[:2]) if argv[1] == "export" else "python -m smollm.eval" if argv[0] == "-m" else argv[0]
    assert len(other) == 1, other  # one line: no usage block
    assert other[0].startswith(start) and other[0].endswith(f" (see {prog} --help)"), other[0]
    assert not imported & HEAVY, f"{' '.join(argv)} imported {sorted(imported & HEAVY)}"


def test_the_module_main_functions_still_parse(capsys):
    """smollm.cli.train.main and smollm.cli.generate.main, called in-process as the tests call them,
    answer an argument error as the scripts do: the same one line."""
    import smollm.cli.generate as G
    import smollm.cli.train as CT

    for main, prog in ((CT.main, "train.py"), (G.main, "generate.py")):
        with pytest.raises(SystemExit) as e:
            main(["--nope"])
        assert e.value.code == 2
        assert capsys.readouterr().err == f"{prog}: error: unrecognized arguments: --nope (see {prog} --help)\n"
