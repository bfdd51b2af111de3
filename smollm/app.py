"""A Gradio app to try a run: `python app.py [--run runs/tiny] [--model PATH] [--port 7860]`.

Offline, on any of our checkpoints, a Hugging Face directory or the real SmolLM2 GGUF: a prompt box,
the sampling controls, the text streamed token by token; and a tab that sends one prompt through
every checkpoint of a run, side by side with their step and loss. Serves on 127.0.0.1 unless told
otherwise. A model is loaded once and reused; on a CPU it decodes with smollm.cpu_decode."""

from __future__ import annotations

import glob
import inspect
import os
import queue
import threading
import time
from collections import OrderedDict

import gradio as gr

from smollm.checkpoint import list_checkpoints
from smollm.sources import load
from smollm.cpu_decode import cpu_decode
from smollm.errors import error_line
from smollm.eval.results import history_table
from smollm.files import SourceNotFound
from smollm.generate import Sampling, generate, text_so_far
from smollm.metrics import read_metrics
from smollm.runs import is_run_dir
from smollm.samples import compare_checkpoints, sample_settings
from smollm.tokenizer import smollm2_gguf_path

SMOLLM2 = "SmolLM2-135M-Instruct (GGUF, offline)"


class Models:
    """Loaded models by source, the most recent `keep` kept; one generation per model at a time
    (its KV cache lives on the model)."""

    def __init__(self, kernels: str = "torch", keep: int = 2):
        self.kernels, self.keep = kernels, keep
        self.loaded: OrderedDict[str, tuple] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, source: str):
        """(model, tokenizer, model lock) for a source (a run, a checkpoint, an HF dir, a .gguf, a
        run's remote URL)."""
        with self.lock:
            if source not in self.loaded:
                model, tokenizer = load(source, kernels=self.kernels)
                self.loaded[source] = (model.eval(), tokenizer, threading.Lock())
                while len(self.loaded) > self.keep:
                    self.loaded.popitem(last=False)
            self.loaded.move_to_end(source)
            return self.loaded[source]


def user_error(message: str) -> gr.Error:
    """A message for the user (shown in the app), without a traceback in the app's console."""
    if "print_exception" in inspect.signature(gr.Error).parameters:
        return gr.Error(message, print_exception=False)
    return gr.Error(message)


def _quiet_bounds(component):
    """component (a gr.Slider or gr.Number) whose out-of-range value, which only the API can send, is a
    message naming the field for the client alone: gradio's own bounds check also printed a traceback
    on the server's console for each one. Its instance's preprocess is wrapped (a subclass would be
    another frontend component, and gradio writes a .pyi file beside any module that defines one)."""
    check = component.preprocess

    def preprocess(payload):
        try:
            return check(payload)
        except gr.Error as e:
            raise user_error(f"{component.label}: {e.message}") from None

    component.preprocess = preprocess
    return component


def Slider(*args, **kwargs):  # noqa: N802 -- stands in for gr.Slider
    return _quiet_bounds(gr.Slider(*args, **kwargs))


def Number(*args, **kwargs):  # noqa: N802 -- stands in for gr.Number
    return _quiet_bounds(gr.Number(*args, **kwargs))


def find_runs(patterns: list[str]) -> list[str]:
    """Run directories (those with checkpoints) among the given paths and globs."""
    runs = []
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)) or [pattern]:
            if is_run_dir(path) and path not in runs:
                runs.append(path)
    return runs


def model_choices(runs: list[str], models: list[str]) -> list[tuple[str, str]]:
    """(label, source) for every checkpoint of every run (newest first), the models given, and the
    offline SmolLM2 GGUF when it is installed."""
    choices = []
    for run in runs:
        for step, path in reversed(list_checkpoints(run)):
            choices.append((f"{os.path.basename(os.path.abspath(run))} · step {step:,}", path))
    choices += [(m, m) for m in models]
    gguf = smollm2_gguf_path()
    if gguf:
        choices.append((SMOLLM2, gguf))
    return choices


def _sampling(temperature, top_k, top_p, repetition_penalty, seed) -> Sampling:
    try:
        return Sampling(temperature=float(temperature), top_k=int(top_k) if top_k else None,
                        top_p=float(top_p) if top_p is not None and float(top_p) < 1 else None,
                        repetition_penalty=float(repetition_penalty), seed=int(seed or 0))
    except (TypeError, ValueError) as e:
        raise user_error(str(e)) from None


def _check_source(source: str) -> str:
    """A model was chosen (whether it exists, load says: smollm.files.SourceNotFound)."""
    if not source:
        raise user_error("Choose a model.")
    return source


def stream_text(models: Models, source: str, prompt: str, max_new_tokens, temperature, top_k, top_p,
                repetition_penalty, seed):
    """Yields prompt + the continuation so far, as each token is chosen."""
    if not prompt or not prompt.strip():
        raise user_error("Enter a prompt.")
    sampling = _sampling(temperature, top_k, top_p, repetition_penalty, seed)
    try:
        model, tok, lock = models.get(_check_source(source))
    except SourceNotFound as e:
        raise user_error(e.describe(e.label.capitalize())) from None
    except (FileNotFoundError, ValueError, KeyError, OSError) as e:
        raise user_error(f"Could not load {source}: {error_line(e)}") from None
    ids = tok(prompt)["input_ids"]
    tokens: queue.Queue = queue.Queue()
    failure = []

    def work():
        try:
            with lock, cpu_decode(model, batch=1):
                generate(model, [ids], int(max_new_tokens), sampling, eos_id=tok.eos_token_id,
                         on_token=lambda i, t: tokens.put(t))
        except Exception as e:  # shown to the user below, not as a stack trace
            failure.append(e)
        finally:
            tokens.put(None)

    threading.Thread(target=work, daemon=True).start()
    new: list[int] = []
    yield prompt
    while (t := tokens.get()) is not None:
        new.append(t)
        text = text_so_far(tok, new)
        if text is not None:
            yield prompt + text
    if failure:
        e = failure[0]
        if isinstance(e, (ValueError, KeyError, OSError)):  # the input or the model: a message only
            raise user_error(error_line(e))
        raise gr.Error(error_line(e)) from e  # a bug: its traceback stays in the console
    yield prompt + tok.decode(new, skip_special_tokens=True)


def compare_run(run: str, prompt: str, max_new_tokens, temperature, top_k, top_p, seed, kernels="torch") -> str:
    """The Markdown table of one prompt through every checkpoint of a run."""
    if not prompt or not prompt.strip():
        raise user_error("Enter a prompt.")
    if not run or not is_run_dir(run):
        raise user_error(f"{run or 'No run'} is not a run directory with checkpoints.")
    ckpts = [path for _, path in list_checkpoints(run)]
    if not ckpts:
        raise user_error(f"Run {run} has no checkpoints yet.")
    sampling = _sampling(temperature, top_k, top_p, 1.0, seed)
    try:
        return compare_checkpoints(ckpts, prompt, int(max_new_tokens), sampling, kernels=kernels)
    except (ValueError, KeyError, OSError) as e:  # CheckpointError (a corrupt file), a missing one, ...
        raise user_error(f"Could not compare the checkpoints of {run}: {error_line(e)}") from None


def _generate_tab(models: Models, choices: list[tuple[str, str]]) -> None:
    with gr.Row():
        model = gr.Dropdown(choices, value=choices[0][1] if choices else None, label="Model",
                            allow_custom_value=True, elem_id="model")
    prompt = gr.Textbox(label="Prompt", lines=3, value="def fibonacci(n):", elem_id="prompt")
    with gr.Row():
        max_new = Slider(1, 512, value=64, step=1, label="Max new tokens")
        temperature = Slider(0, 2, value=0.8, step=0.05, label="Temperature (0 = greedy)")
        top_k = Number(value=50, precision=0, label="Top-k (0 = off)")
    with gr.Row():
        top_p = Slider(0.01, 1, value=0.95, step=0.01, label="Top-p (1 = off)")
        penalty = Slider(0.5, 2, value=1.0, step=0.05, label="Repetition penalty")
        seed = Number(value=0, precision=0, label="Seed")
    button = gr.Button("Generate", variant="primary", elem_id="generate")
    output = gr.Textbox(label="Text", lines=12, elem_id="output")

    def on_generate(*inputs):
        yield from stream_text(models, *inputs)

    button.click(on_generate, [model, prompt, max_new, temperature, top_k, top_p, penalty, seed], output,
                 api_name="generate")


def compare_settings(run: str | None) -> tuple[int, float, int, int]:
    """(max new tokens, temperature, top-k (0 = off), seed) the Compare tab starts from: the run's own
    sample settings (how its samples.md was drawn), else greedy, 32 tokens."""
    s = sample_settings(run) if run else {}
    return (int(s.get("max_new_tokens", 32)), float(s.get("temperature", 0.0)), int(s.get("top_k") or 0),
            int(s.get("seed", 0)))


def _compare_tab(runs: list[str], kernels: str) -> None:
    run = gr.Dropdown(runs, value=runs[0] if runs else None, label="Run", allow_custom_value=True, elem_id="run")
    prompt = gr.Textbox(label="Prompt", value="def fibonacci(n):", elem_id="compare-prompt")
    n0, t0, k0, s0 = compare_settings(runs[0] if runs else None)
    with gr.Row():
        max_new = Slider(1, 256, value=n0, step=1, label="Max new tokens")
        temperature = Slider(0, 2, value=t0, step=0.05, label="Temperature (0 = greedy)")
        top_k = Number(value=k0, precision=0, label="Top-k (0 = off)")
        top_p = Slider(0.01, 1, value=1.0, step=0.01, label="Top-p (1 = off)")
        seed = Number(value=s0, precision=0, label="Seed")
    run.change(compare_settings, run, [max_new, temperature, top_k, seed])  # each run as it sampled itself
    button = gr.Button("Compare", variant="primary", elem_id="compare")
    table = gr.Markdown(elem_id="table")
    button.click(lambda *a: compare_run(*a, kernels=kernels), [run, prompt, max_new, temperature, top_k, top_p, seed],
                 table, api_name="compare")


def run_scores(run: str | None) -> str:
    """The Benchmarks tab: a run's scores at each evaluation (eval.* in its config), as a table."""
    if not run or not is_run_dir(run):
        return f"{run or 'No run'} is not a run directory."
    try:
        table = history_table(read_metrics(run))
    except ValueError as e:  # a damaged metrics.jsonl line
        return error_line(e)
    return table or (f"Run {run} has no benchmark scores yet: they are written at checkpoints when its config "
                     f"names eval.tasks (README: Evaluation).")


def _scores_tab(runs: list[str]) -> None:
    run = gr.Dropdown(runs, value=runs[0] if runs else None, label="Run", allow_custom_value=True, elem_id="scores-run")
    table = gr.Markdown(run_scores(runs[0]) if runs else "", elem_id="scores")
    run.change(run_scores, run, table, api_name="scores")


def build_app(runs: list[str], models: list[str], kernels: str = "torch") -> gr.Blocks:
    with gr.Blocks(title="smollm-triton") as app:
        gr.Markdown("# smollm-triton\nContinue a prompt with one of this run's checkpoints or the real SmolLM2, "
                    "offline; or watch one prompt improve across a run's checkpoints.")
        with gr.Tab("Generate"):
            _generate_tab(Models(kernels), model_choices(runs, models))
        with gr.Tab("Compare checkpoints"):
            _compare_tab(runs, kernels)
        with gr.Tab("Benchmarks"):
            _scores_tab(runs)
    return app


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's (./setup.sh --browser)


def screenshot(url: str, path: str, prompt: str = "import os", timeout: float = 120.0) -> str:
    """In headless Chromium: open the app at url, type prompt, press Generate, wait until the
    streamed text stops growing, save a screenshot to path. Returns the text (for the browser test;
    `app.py --screenshot` makes the README's docs/app.png with it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        raise FileNotFoundError(f"{CHROMIUM} and {CHROMEDRIVER} are needed: ./setup.sh --browser installs Debian's "
                                f"chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(url)
        wait = WebDriverWait(driver, timeout)
        box = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "#prompt textarea")))
        box.clear()
        box.send_keys(prompt)
        driver.find_element(By.CSS_SELECTOR, "#generate").click()
        out = driver.find_element(By.CSS_SELECTOR, "#output textarea")
        wait.until(lambda d: len(out.get_attribute("value")) > len(prompt) + 5)
        seen, deadline = out.get_attribute("value"), time.time() + timeout
        while time.time() < deadline:  # until the text stops growing
            time.sleep(1.0)
            now = out.get_attribute("value")
            if now == seen:
                break
            seen = now
        driver.save_screenshot(path)
        return seen
    finally:
        driver.quit()
