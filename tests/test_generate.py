import os

import pytest
import torch

import smollm.cli.generate as G
from conftest import PROMPTS, micro_run_overrides
from smollm.sources import load
from smollm.config import get_preset
from smollm.generate import CachedDecoder, Sampling, generate, next_tokens, repetition_penalty
from smollm.model import SmolLM
from smollm.weights import load_model

EOS = 0


def _ids(tokenizer, prompts):
    return [tokenizer(p)["input_ids"] for p in prompts]


# --------------------------------------------------------------- the real SmolLM2 weights --

def test_greedy_equals_transformers_generate(ours_golden, hf_golden, tokenizer):
    for prompt in PROMPTS[:4]:
        ids = tokenizer(prompt)["input_ids"]
        ours = generate(ours_golden, [ids], 64, eos_id=EOS)[0]
        x = torch.tensor([ids])
        theirs = hf_golden.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=64, do_sample=False,
                                    eos_token_id=EOS, pad_token_id=EOS)[0, len(ids):].tolist()
        if EOS in theirs:
            theirs = theirs[:theirs.index(EOS) + 1]  # transformers pads after the end
        assert ours == theirs, prompt
        assert len(ours) == 64 or ours[-1] == EOS


def test_cached_logits_equal_a_full_recompute_at_every_step(ours_golden, tokenizer):
    ids = tokenizer(PROMPTS[3])["input_ids"]
    dec = CachedDecoder(ours_golden, [ids], 24)
    try:
        logits = dec.prefill()
        seq = list(ids)
        for _ in range(24):
            with torch.no_grad():
                full = ours_golden(torch.tensor([seq]))[:, -1]  # (1, V)
            assert (logits - full).abs().max().item() < 1e-4, len(seq)
            nxt = int(logits.argmax(-1))
            seq.append(nxt)
            if dec.slot < dec.S:
                logits = dec.step(torch.tensor([nxt]))
    finally:
        dec.close()


def test_batched_left_padding_equals_one_prompt_at_a_time(ours_golden, tokenizer):
    prompts = _ids(tokenizer, [PROMPTS[0], PROMPTS[3], PROMPTS[4]])  # 5 to 19 tokens: left padding
    assert len({len(p) for p in prompts}) == 3
    batched = generate(ours_golden, prompts, 24, eos_id=EOS)
    single = [generate(ours_golden, [p], 24, eos_id=EOS)[0] for p in prompts]
    assert batched == single


def test_sampling_is_reproducible_and_top_k_1_is_greedy(ours_golden, tokenizer):
    ids = _ids(tokenizer, [PROMPTS[2]])
    s = Sampling(temperature=0.9, top_k=50, top_p=0.95, repetition_penalty=1.1, seed=7)
    a = generate(ours_golden, ids, 20, s)
    assert a == generate(ours_golden, ids, 20, s)
    assert a != generate(ours_golden, ids, 20, Sampling(temperature=0.9, top_k=50, top_p=0.95,
                                                        repetition_penalty=1.1, seed=8))
    greedy = generate(ours_golden, ids, 20)
    assert generate(ours_golden, ids, 20, Sampling(temperature=1.0, top_k=1, seed=3)) == greedy
    assert generate(ours_golden, ids, 20, Sampling(temperature=1.0, top_p=1e-6, seed=3)) == greedy


# --------------------------------------------------------------- sampling, against transformers --

def test_logits_processing_matches_transformers():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor, TopPLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(3, 1000) * 3
    history = torch.randint(0, 1000, (3, 40))
    seen = torch.zeros(3, 1000, dtype=torch.bool).scatter_(1, history, True)
    want = RepetitionPenaltyLogitsProcessor(1.3)(history, logits.clone())
    assert torch.equal(repetition_penalty(logits, seen, 1.3), want)
    # greedy after the penalty = argmax of transformers' processed scores
    assert torch.equal(next_tokens(logits, seen, Sampling(repetition_penalty=1.3), None), want.argmax(-1))
    # top-p keeps the same tokens as transformers' warper: sample many times, never outside its set
    kept = TopPLogitsWarper(0.8)(history, logits.clone()).isfinite()
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        tok = next_tokens(logits, None, Sampling(temperature=1.0, top_p=0.8), g)
        assert kept[torch.arange(3), tok].all()


# --------------------------------------------------------------- paths, compile, bad input --

@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_cached_decoding_on_both_kernel_paths(kernels):
    torch.manual_seed(0)
    model = SmolLM(get_preset("tiny"), kernels=kernels).eval()
    prompts = [[5, 6, 7, 8, 9], [11, 12]]
    out = generate(model, prompts, 6)
    for p, o in zip(prompts, out):
        seq = list(p)
        for tok in o:  # each token is the argmax of a full recompute
            with torch.no_grad():
                assert int(model(torch.tensor([seq]))[0, -1].argmax()) == tok
            seq.append(tok)


def test_compiled_decode_step_gives_the_same_tokens():
    torch.manual_seed(0)
    model = SmolLM(get_preset("tiny")).eval()
    prompts = [[5, 6, 7, 8, 9], [11, 12]]
    assert generate(model, prompts, 8, compile=True) == generate(model, prompts, 8)


def test_bad_input():
    model = SmolLM(get_preset("tiny")).eval()  # 512 positions
    with pytest.raises(ValueError, match="longer than the model's context"):
        generate(model, [[1] * 600], 4)
    with pytest.raises(ValueError, match="top_p"):
        Sampling(temperature=1, top_p=1.5)
    with pytest.raises(ValueError, match="top_p"):
        Sampling(temperature=1, top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        Sampling(temperature=-0.1)
    assert len(generate(model, [[1] * 510], 10)[0]) == 2  # stops at the end of the context


def test_cli_errors(tmp_path, capsys):
    for argv, msg in ([["--top-p", "1.5"], "top_p must be in (0, 1]"], [["--temperature", "-1"], "temperature"],
                      [["--model", str(tmp_path / "nope")], "nope"],
                      [["--checkpoints", str(tmp_path / "missing")], "does not exist"]):
        with pytest.raises(SystemExit):
            G.main(argv)
        assert msg in capsys.readouterr().err


# --------------------------------------------------------------- checkpoints of a run --

def test_checkpoint_comparison_of_a_run(tmp_path, dataset, gguf_path, capsys):
    from smollm.training.loop import train
    from smollm.train_config import RunConfig, apply_overrides

    run = tmp_path / "run"
    train(apply_overrides(RunConfig(), micro_run_overrides(run, dataset, gguf_path, "log.ckpt_every=2")).validate())
    out = tmp_path / "compare.md"
    assert G.main(["--checkpoints", str(run), "--prompt", "def f(x):", "--max-new-tokens", "8",
                   "--temperature", "0.8", "--top-k", "20", "--seed", "1", "--out", str(out)]) == 0
    md = out.read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| step")]
    assert [r.split("|")[1].strip() for r in rows] == ["2", "4", "6"]
    assert all("def f(x):" in r for r in rows) and "temperature 0.8" in md
    printed = capsys.readouterr().out
    assert printed.count("=== ") == 3 and "step 6 · 1,536 tokens" in printed
    # A run directory is its latest checkpoint, with its own tokenizer.
    model, tok = load(str(run))
    latest = load_model(str(run / "checkpoints" / "step_000006"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), latest.state_dict().values()))
    assert os.path.isfile(run / "checkpoints" / "step_000006" / "tokenizer.json") and tok("x = ")["input_ids"]
    assert G.main(["--model", str(run), "--prompt", "x = ", "--max-new-tokens", "3"]) == 0
    assert G.main(["--model", str(run), "--prompt", "x = ", "--max-new-tokens", "3", "--no-cpu-tuning"]) == 0

    # Without sampling flags, the comparison samples as the run's own samples did (its config's sample
    # section), says so, and gives the same table as those settings given by hand.
    capsys.readouterr()
    by_run, by_hand = tmp_path / "by_run.md", tmp_path / "by_hand.md"
    assert G.main(["--checkpoints", str(run), "--prompt", "def f(x):", "--out", str(by_run)]) == 0
    said = [x for x in capsys.readouterr().out.splitlines() if x.startswith("sampling as the run's own samples")]
    assert said == ["sampling as the run's own samples: max_new_tokens 4, temperature 0.0, top_k None, seed 0 "
                    "(from its config; --temperature, --top-k, --seed, --max-new-tokens override)"]
    assert G.main(["--checkpoints", str(run), "--prompt", "def f(x):", "--max-new-tokens", "4", "--temperature", "0",
                   "--seed", "0", "--out", str(by_hand)]) == 0
    assert by_run.read_text() == by_hand.read_text()
    # --model RUN (or one of its checkpoints) samples as the run did too.
    for model in (run, run / "checkpoints" / "step_000004"):
        assert G.main(["--model", str(model), "--prompt", "x = "]) == 0
        assert "sampling as the run's own samples: max_new_tokens 4, temperature 0.0" in capsys.readouterr().out
    assert G.main(["--model", str(run), "--prompt", "x = ", "--max-new-tokens", "2", "--temperature", "0.5",
                   "--top-k", "3", "--seed", "2"]) == 0
    assert "sampling as the run's own" not in capsys.readouterr().out  # every setting given: none taken
    # Without --prompt, a run continues its own sample prompts (a batch) and --checkpoints the first.
    from smollm.samples import sample_prompts

    own = sample_prompts(str(run))
    assert own and G.main(["--model", str(run), "--max-new-tokens", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"prompts: the run's own sample prompts ({len(own)}; --prompt overrides)" in printed
    assert all(f"--- {p}" in printed for p in own) and "The three most important" not in printed
    assert G.main(["--checkpoints", str(run), "--max-new-tokens", "2"]) == 0
    assert "prompts: the run's own sample prompts (1; --prompt overrides)" in capsys.readouterr().out


def test_compare_takes_the_runs_sampling(tmp_path):
    """A run sampled at temperature 0.8, top-k 50: the comparison (CLI and the app's Compare tab)
    starts from those settings, not from greedy decoding."""
    from smollm.app import compare_settings
    from smollm.samples import sample_settings

    run = tmp_path / "run"
    (run / "checkpoints" / "step_000002").mkdir(parents=True)
    (run / "config.yaml").write_text("sample:\n  max_new_tokens: 48\n  temperature: 0.8\n  top_k: 50\n  seed: 3\n")
    (run / "checkpoints" / "step_000002" / "run_config.yaml").write_text("sample:\n  temperature: 0.5\n")
    assert sample_settings(str(run)) == {"max_new_tokens": 48, "temperature": 0.8, "top_k": 50, "seed": 3}
    assert sample_settings(str(run / "checkpoints" / "step_000002")) == {"temperature": 0.5}
    assert sample_settings(str(tmp_path)) == {}  # not a run: nothing
    assert compare_settings(str(run)) == (48, 0.8, 50, 3)
    assert compare_settings(None) == (32, 0.0, 0, 0)


def test_load_errors_name_the_source(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="run .*run has no checkpoints yet"):
        load(str(tmp_path / "run"))
    with pytest.raises(FileNotFoundError, match="nope: no such file or directory"):
        load(str(tmp_path / "nope"))
