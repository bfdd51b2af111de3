import json
import os

import numpy as np
import pytest

from smollm.data import TokenWindows, open_shard, shard_paths
from smollm.prepare.counts import parse_count
from smollm.prepare.run import prepare
from smollm.prepare.sources import stdlib_files
from smollm.prepare.worker import is_val

DOCS = [f"Document {i}: " + " ".join(f"word{j} {i * j}" for j in range(i % 17 + 3)) + ("\n    def f(x): return x" * (i % 3))
        for i in range(120)] + ["Unicode: café, naïve, 日本語, emoji 🎉", "   ", "last one"]


def _jsonl(path, docs, column="text"):
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({column: d, "id": 1}) + "\n")
    return str(path)


def _stream(directory, split):
    return np.concatenate([np.asarray(open_shard(p)) for p in shard_paths(directory, split)])


def _expected(tokenizer, docs, val_fraction):
    out = {"train": [], "val": []}
    for d in docs:
        if d.strip():
            out["val" if is_val(d, val_fraction) else "train"] += tokenizer(d)["input_ids"] + [0]
    return {k: np.array(v, dtype=np.uint16) for k, v in out.items()}


def _run(src, out, tokenizer, **kw):
    kw = {"shard_tokens": 300, "val_fraction": 0.2, "workers": 2, "batch_docs": 8, "progress": False, **kw}
    return prepare(src, str(out), tokenizer=tokenizer, **kw)


def test_round_trip(tmp_path, tokenizer):
    src = [_jsonl(tmp_path / "a.jsonl", DOCS[:60]), _jsonl(tmp_path / "b.jsonl", DOCS[60:])]
    meta = _run(src, tmp_path / "ds", tokenizer)
    want = _expected(tokenizer, DOCS, 0.2)
    for split in ("train", "val"):
        got = _stream(str(tmp_path / "ds"), split)
        np.testing.assert_array_equal(got, want[split])
        assert meta["tokens"][split] == len(want[split])
    assert len(shard_paths(str(tmp_path / "ds"), "train")) > 3  # several shards, each ending at a document
    assert meta["complete"] and meta["docs_done"] == len(DOCS) and meta["eos_id"] == 0
    assert meta["documents"]["train"] + meta["documents"]["val"] == len(DOCS) - 1  # the blank one is skipped
    assert meta["source"]["files"] == [os.path.abspath(p) for p in src]


def test_resume_after_interruption(tmp_path, tokenizer):
    src = [_jsonl(tmp_path / "a.jsonl", DOCS)]
    _run(src, tmp_path / "whole", tokenizer)
    partial = _run(src, tmp_path / "resumed", tokenizer, max_commits=3)  # killed after its 3rd commit
    assert not partial["complete"] and 0 < partial["docs_done"] < len(DOCS)
    _run(src, tmp_path / "resumed", tokenizer)  # the rerun continues
    whole, resumed = (json.load(open(tmp_path / d / "meta.json")) for d in ("whole", "resumed"))
    assert [s["file"] for s in whole["shards"]] == [s["file"] for s in resumed["shards"]]
    for s in whole["shards"]:
        assert (tmp_path / "whole" / s["file"]).read_bytes() == (tmp_path / "resumed" / s["file"]).read_bytes()
    assert whole["tokens"] == resumed["tokens"] and whole["documents"] == resumed["documents"]


def test_output_does_not_depend_on_workers_or_threads(tmp_path, tokenizer):
    src = [_jsonl(tmp_path / "a.jsonl", DOCS)]
    tokenizer(DOCS[:50])  # the parent encodes in parallel first: forked workers must still use their threads
    _run(src, tmp_path / "w1", tokenizer, workers=1, threads=1)
    _run(src, tmp_path / "w2", tokenizer, workers=2, threads=3, batch_docs=7)
    for split in ("train", "val"):
        np.testing.assert_array_equal(_stream(str(tmp_path / "w1"), split), _stream(str(tmp_path / "w2"), split))


def test_token_budget(tmp_path, tokenizer):
    src = [_jsonl(tmp_path / "a.jsonl", DOCS)]
    meta = _run(src, tmp_path / "ds", tokenizer, max_tokens=500)
    total = meta["tokens"]["train"] + meta["tokens"]["val"]
    assert 500 <= total < 500 + 200 and meta["complete"]


def test_parquet_and_txt_sources(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": DOCS[:30]}), tmp_path / "a.parquet")
    (tmp_path / "b.txt").write_text(DOCS[30], encoding="utf-8")
    _run([str(tmp_path / "a.parquet"), str(tmp_path / "b.txt")], tmp_path / "ds", tokenizer, column="content",
         val_fraction=0.0)
    want = _expected(tokenizer, DOCS[:31], 0.0)
    np.testing.assert_array_equal(_stream(str(tmp_path / "ds"), "train"), want["train"])


def test_empty_source(tmp_path, tokenizer):
    src = [_jsonl(tmp_path / "empty.jsonl", [])]
    with pytest.raises(ValueError, match="has no documents with text"):
        _run(src, tmp_path / "ds", tokenizer)
    assert not os.path.exists(tmp_path / "ds" / "meta.json")


def test_missing_column(tmp_path, tokenizer):
    src = [_jsonl(tmp_path / "a.jsonl", DOCS[:3], column="body")]
    with pytest.raises(KeyError, match=r"a.jsonl:1: no column 'text' \(columns: \['body', 'id'\]\)"):
        _run(src, tmp_path / "ds", tokenizer)


def test_no_matching_files(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="matches no file"):
        _run([str(tmp_path / "nothing*.jsonl")], tmp_path / "ds", tokenizer)


def _word_level_tokenizer(n_tokens):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, **{f"w{i}": i for i in range(1, n_tokens)}}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>")


def test_tokenizer_too_large_for_uint16(tmp_path):
    with pytest.raises(ValueError, match="has 70000 tokens, which does not fit uint16"):
        _run([_jsonl(tmp_path / "a.jsonl", DOCS[:3])], tmp_path / "ds", _word_level_tokenizer(70000))


def test_existing_directory_made_with_another_tokenizer(tmp_path, tokenizer):
    src = [_jsonl(tmp_path / "a.jsonl", DOCS[:20])]
    _run(src, tmp_path / "ds", tokenizer)
    before = {p: (tmp_path / "ds" / p).read_bytes() for p in os.listdir(tmp_path / "ds")}
    with pytest.raises(ValueError, match="holds shards made with another tokenizer.*Nothing was changed"):
        _run(src, tmp_path / "ds", _word_level_tokenizer(100))
    assert {p: (tmp_path / "ds" / p).read_bytes() for p in os.listdir(tmp_path / "ds")} == before


def test_non_empty_directory_without_meta(tmp_path, tokenizer):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty and has no meta.json"):
        _run([_jsonl(tmp_path / "a.jsonl", DOCS[:3])], tmp_path / "ds", tokenizer)


def test_parse_count():
    assert parse_count("1.2B") == 1_200_000_000 and parse_count("500M") == 500_000_000
    assert parse_count("10k") == 10_000 and parse_count("12345") == 12345
    with pytest.raises(ValueError, match="not a count: 'lots'"):
        parse_count("lots")


def test_stdlib_corpus_files():
    root, files = stdlib_files()
    assert "os.py" in files and "json/__init__.py" in files and len(files) > 500
    assert not any("site-packages" in f or "dist-packages" in f for f in files)
    assert files == sorted(files)


def test_real_tokenizer_on_a_real_slice_of_the_stdlib(tmp_path, tokenizer):
    meta = _run(["stdlib"], tmp_path / "ds", tokenizer, max_tokens=60_000, shard_tokens=20_000, val_fraction=0.05)
    root, files = stdlib_files()
    assert meta["source"] == {"kind": "stdlib", "root": root, "files": files}
    train = _stream(str(tmp_path / "ds"), "train")
    texts = (open(os.path.join(root, f), encoding="utf-8").read() for f in files)
    first = next(t for t in texts if t.strip() and not is_val(t, 0.05))  # the train split's first document
    first_doc = train[:np.argmax(train == 0)]  # up to the first <|endoftext|>
    assert tokenizer.decode(first_doc.tolist()) == first
    w = TokenWindows(str(tmp_path / "ds"), "train", 256, vocab_size=49152)
    assert w.n_tokens == meta["tokens"]["train"]


def test_hf_streaming_source_on_a_local_dataset(tmp_path, tokenizer):
    """The same load_dataset(..., streaming=True) path that streams cosmopedia-v2 from the hub."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "corpus" / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": DOCS[:40]}), tmp_path / "corpus" / "data" / "train-00000.parquet")
    src = [f"hf:{tmp_path / 'corpus'}"]
    partial = _run(src, tmp_path / "ds", tokenizer, max_commits=2)
    assert 0 < partial["docs_done"] < 40
    meta = _run(src, tmp_path / "ds", tokenizer)  # resumes through the stream's skip()
    assert meta["source"]["kind"] == "hf"
    want = _expected(tokenizer, DOCS[:40], 0.2)
    for split in ("train", "val"):
        np.testing.assert_array_equal(_stream(str(tmp_path / "ds"), split), want[split])


def test_hf_hub_unreachable_is_a_clear_error(tmp_path, tokenizer):
    with pytest.raises(OSError, match="cannot stream HuggingFaceTB/smollm-corpus/cosmopedia-v2 from the Hugging Face Hub"):
        _run(["hf"], tmp_path / "ds", tokenizer)


def test_split_by_chars_keeps_every_document_in_order():
    from smollm.prepare.worker import _split_by_chars

    for texts in (["a" * 10, "b", "c" * 5, "", "d" * 30], ["x"], ["", ""], [str(i) * i for i in range(40)]):
        for parts in (1, 2, 3, 8, 50):
            pieces = _split_by_chars(texts, parts)
            assert [t for p in pieces for t in p] == texts and len(pieces) <= parts and all(pieces)
