"""smollm/app.py, the Gradio app: through gradio_client, and in a real headless browser (Debian's
Chromium and chromedriver, installed by `./setup.sh --browser`)."""

import os
import socket

import pytest

from conftest import micro_run_overrides
from smollm.app import build_app
from smollm.sources import load
from smollm.cpu_decode import cpu_decode
from smollm.generate import Sampling, generate

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory, dataset, gguf_path):
    from smollm.training.loop import train
    from smollm.train_config import RunConfig, apply_overrides

    run = tmp_path_factory.mktemp("app") / "micro"
    train(apply_overrides(RunConfig(), micro_run_overrides(run, dataset, gguf_path, "log.ckpt_every=3")).validate())
    return str(run)


@pytest.fixture(scope="module")
def served(run):
    app = build_app([run], [])
    port = _free_port()
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.close()


def _expected(ckpt, prompt, n, sampling):
    model, tok = load(ckpt)
    with cpu_decode(model, batch=1):  # as the app decodes
        new = generate(model, [tok(prompt)["input_ids"]], n, sampling, eos_id=tok.eos_token_id)[0]
    return prompt + tok.decode(new, skip_special_tokens=True)


def test_generate_streams_through_gradio_client(served, run):
    from gradio_client import Client

    ckpt = os.path.join(run, "checkpoints", "step_000006")
    client = Client(served, verbose=False)
    job = client.submit(ckpt, "def f(x):", 12, 0.8, 20, 0.95, 1.1, 3, api_name="/generate")
    final = job.result(timeout=300)
    outputs = job.outputs()
    assert final == _expected(ckpt, "def f(x):", 12, Sampling(0.8, 20, 0.95, 1.1, 3))
    assert len(outputs) > 2 and outputs[0] == "def f(x):"  # streamed: the prompt, then growing text
    assert all(b.startswith(a) or a.endswith("\ufffd") for a, b in zip(outputs, outputs[1:]))
    # Loaded once, reused: a second request is the same text.
    assert client.predict(ckpt, "def f(x):", 12, 0.8, 20, 0.95, 1.1, 3, api_name="/generate") == final


def test_bad_input_is_a_message_not_a_stack_trace(served, run):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(served, verbose=False)
    ckpt = os.path.join(run, "checkpoints", "step_000006")
    for args, message in [((ckpt, "   ", 8, 0, 0, 1, 1, 0), "Enter a prompt"),
                          ((os.path.join(run, "checkpoints", "step_999999"), "x", 8, 0, 0, 1, 1, 0),
                           "step_999999: no such file or directory"),
                          ((ckpt, "x", 8, 0.5, -3, 1, 1, 0), "top_k must be at least 1")]:
        with pytest.raises(AppError, match=message):
            client.predict(*args, api_name="/generate")
    with pytest.raises(AppError, match="not a run directory"):
        client.predict(os.path.join(run, "nope"), "x", 4, 0, 0, 1, 0, api_name="/compare")


def test_out_of_range_api_values_are_a_message_and_no_console_traceback(served, run, capfd):
    """Values past a slider's bounds come only through the API: the client is told which field, and the
    server's console stays free of tracebacks (gradio printed one for each)."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(served, verbose=False)
    ckpt = os.path.join(run, "checkpoints", "step_000006")
    capfd.readouterr()
    for args, message in [((ckpt, "x", 100000, 0, 0, 1, 1, 0), "Max new tokens: Value 100000 is greater than maximum"),
                          ((ckpt, "x", 8, -1, 0, 1, 1, 0), "Temperature \\(0 = greedy\\): Value -1 is less than"),
                          ((ckpt, "x", 8, 0, 0, 1, 9, 0), "Repetition penalty: Value 9 is greater than maximum")]:
        with pytest.raises(AppError, match=message):
            client.predict(*args, api_name="/generate")
    with pytest.raises(AppError, match="Top-p \\(1 = off\\): Value 0 is less than minimum"):
        client.predict(run, "x", 4, 0, 0, 0, 0, api_name="/compare")
    console = capfd.readouterr()
    assert "Traceback" not in console.out + console.err, console.err[-3000:]


def test_compare_tab_lists_every_checkpoint(served, run):
    from gradio_client import Client

    md = Client(served, verbose=False).predict(run, "def f(x):", 6, 0, 0, 1, 0, api_name="/compare")
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| step")]
    assert [r.split("|")[1].strip() for r in rows] == ["3", "6"]
    assert all("def f(x):" in r for r in rows)


def test_in_a_headless_browser(served, run, tmp_path):
    """Chromium types a prompt, presses Generate and reads the streamed text (smollm.app.screenshot,
    which `app.py --screenshot` uses for the README's docs/app.png)."""
    from smollm.app import CHROMEDRIVER, CHROMIUM, screenshot

    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed: ./setup.sh --browser installs Debian's "
                    "chromium and chromium-driver")
    shot = str(tmp_path / "app.png")
    seen = screenshot(served, shot, prompt="import os")
    assert seen.startswith("import os") and len(seen) > len("import os")
    assert os.path.getsize(shot) > 10_000


def test_models_are_loaded_once_and_reused(run, monkeypatch):
    import smollm.sources as C
    from smollm.app import Models

    calls = []
    real = C.load_model  # what smollm.sources.load calls
    monkeypatch.setattr(C, "load_model", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    models = Models(keep=1)
    first = os.path.join(run, "checkpoints", "step_000003")
    second = os.path.join(run, "checkpoints", "step_000006")
    a = models.get(first)
    assert models.get(first) is a and len(calls) == 1  # reused
    models.get(second)
    assert list(models.loaded) == [second]  # only `keep` models stay in memory
    assert models.get(run)[0] is not a and calls[-1].endswith("step_000006")  # a run means its latest
