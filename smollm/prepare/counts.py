"""Token counts as people write them: --tokens and --shard-tokens, and data.tokens in a run's config."""

from __future__ import annotations


def parse_count(text: str) -> int:
    """'1.2B', '500M', '10k' or a plain integer."""
    scale = {"k": 10 ** 3, "m": 10 ** 6, "b": 10 ** 9}
    t = str(text).strip().lower().replace("_", "")
    try:
        return int(float(t[:-1]) * scale[t[-1]]) if t and t[-1] in scale else int(t)
    except ValueError:
        raise ValueError(f"not a count: {text!r} (use e.g. 1.2B, 500M, 10k)") from None
