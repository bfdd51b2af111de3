"""Our import names are ours alone: nothing installed can shadow them or be shadowed by them.

The Triton ops once lived in a top-level `kernels` package; Hugging Face's hub-kernels distribution
(a dependency of newer transformers) has the same import name, and run from the repository ours
shadowed theirs and every transformers model import failed."""

import importlib.metadata
import os

import smollm
import smollm.kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = "smollm-triton"


def top_level_names(root: str) -> set[str]:
    """What `import X` finds in the repository's root, where every command runs: its packages (folders with
    an __init__.py) and its modules (train.py, generate.py, app.py)."""
    names = set()
    for entry in os.listdir(root):
        path = os.path.join(root, entry)
        if os.path.isfile(os.path.join(path, "__init__.py")):
            names.add(entry)
        elif entry.endswith(".py") and os.path.isfile(path):
            names.add(entry[:-3])
    return names


def collisions(names: set[str], provided: dict[str, list[str]]) -> dict[str, list[str]]:
    """{name: the other distributions that provide it} for each of `names` that another distribution has."""
    out = {}
    for name in sorted(names):
        others = sorted({d for d in provided.get(name, []) if d.lower().replace("_", "-") != OURS})
        if others:
            out[name] = others
    return out


def test_no_top_level_name_of_ours_is_another_distributions():
    names = top_level_names(ROOT)
    assert {"smollm", "bench", "train", "generate", "app"} <= names, names
    assert "kernels" not in names, "the ops live in smollm.kernels: a top-level kernels is Hugging Face's name"
    clash = collisions(names, importlib.metadata.packages_distributions())
    assert not clash, f"import names of ours that installed distributions also provide: {clash}"


def test_the_collision_check_sees_a_clash():
    """The check above can fail: a name another distribution provides is reported with that distribution."""
    provided = {"kernels": ["kernels"], "smollm": ["smollm-triton"], "bench": ["smollm_triton", "benchlib"]}
    assert collisions({"kernels", "smollm", "bench"}, provided) == {"bench": ["benchlib"], "kernels": ["kernels"]}


def test_the_ops_are_ours():
    assert os.path.dirname(os.path.abspath(smollm.__file__)) == os.path.join(ROOT, "smollm")
    assert os.path.dirname(os.path.abspath(smollm.kernels.__file__)) == os.path.join(ROOT, "smollm", "kernels")
    assert smollm.kernels.rope.__name__ == "smollm.kernels.rope"  # the module, never rebound to the op
