"""Downstream evaluation: multiple-choice benchmarks scored as lm-eval-harness scores them
(`python -m smollm.eval`, and at a run's checkpoints through eval.* in its config).

tasks.py (what each benchmark asks: records -> contexts and choices), scoring.py (log-likelihoods,
batched, the shared context run once), results.py (acc, acc_norm, their errors, the average), suite.py
(evaluate(): the three in order). Nothing is imported here, so that `python -m smollm.eval --help`
answers before torch is imported."""
