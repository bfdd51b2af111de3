import os

import numpy as np
import pytest
import torch

from smollm.data import (HEADER_BYTES, MAGIC, BatchLoader, DocumentWindows, ShardError, TokenWindows, document_ids, open_shard,
                         read_header, write_shard)
from smollm.files import atomic_write_json


def _dataset(tmp_path, shards: dict[str, list[np.ndarray]], vocab=1000):
    os.makedirs(tmp_path, exist_ok=True)
    meta = {"vocab_size": vocab, "eos_id": 0, "shards": []}
    for split, arrays in shards.items():
        for i, tokens in enumerate(arrays):
            name = f"{split}_{i:06d}.bin"
            write_shard(str(tmp_path / name), tokens, vocab, 0)
            meta["shards"].append({"file": name, "split": split, "index": i, "tokens": len(tokens)})
    atomic_write_json(str(tmp_path / "meta.json"), meta)
    return str(tmp_path)


def test_shard_round_trip(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 49152, 5000).astype(np.uint16)
    path = str(tmp_path / "train_000000.bin")
    write_shard(path, tokens, 49152, 0)
    assert os.path.getsize(path) == HEADER_BYTES + 2 * 5000
    assert read_header(path) == {"tokens": 5000, "vocab_size": 49152, "eos_id": 0}
    got = open_shard(path)
    assert isinstance(got, np.memmap) and np.array_equal(got, tokens)
    assert os.listdir(tmp_path) == ["train_000000.bin"]  # no temporary files left


def test_bad_magic(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"\x00" * 2048)
    with pytest.raises(ShardError, match=r"x.bin: bad magic 0x0 .*not a token shard"):
        open_shard(str(path))


def test_truncated(tmp_path):
    path = str(tmp_path / "t.bin")
    write_shard(path, np.arange(100), 1000, 0)
    with open(path, "r+b") as f:
        f.truncate(HEADER_BYTES + 150)
    with pytest.raises(ShardError, match=r"t.bin: truncated or padded: 1174 bytes, the header promises 1224"):
        open_shard(path)
    (tmp_path / "h.bin").write_bytes(np.array([MAGIC], dtype=np.int32).tobytes())
    with pytest.raises(ShardError, match="h.bin: truncated"):
        open_shard(str(tmp_path / "h.bin"))


def test_token_outside_vocab(tmp_path):
    path = tmp_path / "v.bin"  # written by hand: write_shard itself refuses such ids
    header = np.zeros(256, dtype=np.int32)
    header[:5] = (MAGIC, 1, 5, 1000, 0)
    path.write_bytes(header.tobytes() + np.array([1, 2, 3, 1200, 5], dtype=np.uint16).tobytes())
    with pytest.raises(ShardError, match=r"v.bin: token id 1200 at position 3 is outside the vocabulary \[0, 1000\)"):
        open_shard(str(path))
    write_shard(str(tmp_path / "big.bin"), np.array([1, 2]), 1000, 0)
    with pytest.raises(ShardError, match="big.bin: made for vocab size 1000, larger than the model's 500"):
        open_shard(str(tmp_path / "big.bin"), vocab_size=500)
    with pytest.raises(ShardError, match="token ids outside"):
        write_shard(str(tmp_path / "w.bin"), np.array([1, 1000]), 1000, 0)


def test_vocab_must_fit_uint16(tmp_path):
    with pytest.raises(ShardError, match="vocab size 70000 does not fit uint16"):
        write_shard(str(tmp_path / "a.bin"), np.array([1]), 70000, 0)


def test_a_shard_shorter_than_a_window_has_no_windows(tmp_path):
    """A corpus's short last shard (prepare said "complete") no longer refuses the whole dataset: it
    has no windows, every window lies inside one shard, and the longer shards' windows are unchanged."""
    rng = np.random.default_rng(0)
    long_a, long_b = rng.integers(0, 1000, 100), rng.integers(0, 1000, 50)
    short = _dataset(tmp_path / "short", {"train": [long_a, np.arange(10), long_b, np.arange(16)]})
    plain = _dataset(tmp_path / "plain", {"train": [long_a, long_b]})
    w, ref = TokenWindows(short, "train", 16), TokenWindows(plain, "train", 16)
    assert w.n_windows == ref.n_windows == (100 - 16) + (50 - 16)
    for step in range(20):
        got = w.get_batch_numpy(seed=3, step=step, batch_size=8)
        assert np.array_equal(got, ref.get_batch_numpy(seed=3, step=step, batch_size=8))
    every = w.get_batch_numpy(seed=0, step=0, batch_size=w.n_windows)  # each window once
    starts = {tuple(r[:4]) for r in every}
    assert len(starts) == w.n_windows
    # A split with no window at all is one line naming it.
    d = _dataset(tmp_path / "tiny", {"train": [np.arange(10), np.arange(16)]})
    with pytest.raises(ShardError, match=r"tiny: no train shard is as long as one window of 16 \+ 1 tokens \(the "
                                         r"longest holds 16\); prepare more data or lower data.seq_len"):
        TokenWindows(d, "train", 16)


def test_missing_meta_and_missing_shard(tmp_path):
    with pytest.raises(ShardError, match="no meta.json"):
        TokenWindows(str(tmp_path), "train", 8)
    d = _dataset(tmp_path, {"train": [np.arange(100)]})
    os.unlink(os.path.join(d, "train_000000.bin"))
    with pytest.raises(ShardError, match="train_000000.bin: listed in meta.json but missing"):
        TokenWindows(d, "train", 8)
    with pytest.raises(ShardError, match="no val shards"):
        TokenWindows(d, "val", 8)


@pytest.fixture
def windows(tmp_path):
    rng = np.random.default_rng(1)
    d = _dataset(tmp_path, {"train": [rng.integers(0, 1000, n) for n in (3000, 517, 2048)]})
    return TokenWindows(d, "train", 64)


def test_batches_are_windows_of_the_shards(windows):
    b = windows.get_batch(seed=3, step=0, batch_size=8)
    assert b.x.shape == b.y.shape == (8, 64) and b.x.dtype == torch.int64
    assert torch.equal(b.x[:, 1:], b.y[:, :-1])  # y is x shifted by one
    stream = [np.asarray(s) for s in windows.shards]
    for row in torch.cat([b.x, b.y[:, -1:]], dim=1).numpy():
        assert any(any(np.array_equal(row, s[o:o + 65]) for o in range(len(s) - 64)) for s in stream)


def test_batches_depend_only_on_seed_step_rank(windows):
    a = windows.get_batch(seed=3, step=7, batch_size=4, rank=1, world_size=2)
    b = windows.get_batch(seed=3, step=7, batch_size=4, rank=1, world_size=2)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(windows.get_batch(3, 8, 4, 1, 2).x, a.x)
    assert not torch.equal(windows.get_batch(4, 7, 4, 1, 2).x, a.x)


def test_ranks_are_disjoint_and_add_up_to_the_global_batch(windows):
    world, B = 4, 3
    per_rank = [windows.window_starts(seed=0, step=5, batch_size=B, rank=r, world_size=world) for r in range(world)]
    starts = np.concatenate(per_rank)
    assert len(set(starts.tolist())) == world * B  # no window shared between ranks
    np.testing.assert_array_equal(starts, windows.window_starts(seed=0, step=5, batch_size=world * B))
    glob = windows.get_batch(0, 5, world * B)
    assert torch.equal(torch.cat([windows.get_batch(0, 5, B, r, world).x for r in range(world)]), glob.x)


def test_loader_resumes_at_a_step(windows):
    loader = BatchLoader(windows, batch_size=2, seed=9)
    first = [next(loader).x for _ in range(5)]
    resumed = BatchLoader(windows, batch_size=2, seed=9, start_step=3)
    assert torch.equal(next(resumed).x, first[3]) and torch.equal(next(resumed).x, first[4])


def test_too_many_windows_per_step(tmp_path):
    d = _dataset(tmp_path, {"train": [np.arange(20)]})
    with pytest.raises(ShardError, match="8 windows per step, but the split has only 4"):
        TokenWindows(d, "train", 16).get_batch(0, 0, 8)


# ------------------------------------------------------------------------- aligned windows --

def _documents(rng, n, lo, hi, vocab=1000):
    """n documents of lo..hi tokens (ids 1..vocab-1: 0 is EOS), as a list of arrays."""
    return [rng.integers(1, vocab, int(rng.integers(lo, hi))) for _ in range(n)]


def _stream(docs):
    return np.concatenate([np.concatenate([d, [0]]) for d in docs])  # each document then its EOS


@pytest.fixture
def aligned(tmp_path):
    rng = np.random.default_rng(5)
    docs = [_documents(rng, 40, 3, 30), _documents(rng, 25, 5, 90)]  # two shards; some longer than a window
    d = _dataset(tmp_path, {"train": [_stream(docs[0]), _stream(docs[1])[:-1]]})  # the last without its EOS
    return DocumentWindows(d, "train", 48), [doc for shard in docs for doc in shard], d


def test_aligned_windows_are_whole_documents_from_their_start(aligned):
    windows, docs, _ = aligned
    assert windows.n_docs == len(docs)
    known = {tuple(d) for d in docs}
    for step in range(20):
        w = windows.get_batch_numpy(seed=1, step=step, batch_size=4)  # (4, 49)
        assert w.shape == (4, 49)
        for row in w:
            assert row[0] == 0  # every window starts at a document start: its EOS, then its tokens
            cuts = list(np.flatnonzero(row == 0)) + [len(row)]
            pieces = [tuple(row[a + 1:b]) for a, b in zip(cuts, cuts[1:])]
            for piece in pieces[:-1]:
                assert piece in known  # whole documents ...
            assert any(d[:len(pieces[-1])] == pieces[-1] for d in known)  # ... the last one maybe cropped


def test_aligned_batches_depend_only_on_seed_step_rank(aligned):
    windows, _, d = aligned
    a = windows.get_batch(seed=3, step=7, batch_size=4, rank=1, world_size=2)
    again = windows.get_batch(3, 7, 4, 1, 2)
    assert torch.equal(a.x, again.x) and torch.equal(a.docs, again.docs)
    assert not torch.equal(windows.get_batch(3, 8, 4, 1, 2).x, a.x)
    glob = windows.get_batch(3, 7, 8)
    assert torch.equal(torch.cat([windows.get_batch(3, 7, 4, r, 2).x for r in range(2)]), glob.x)
    loader = BatchLoader(windows, batch_size=2, seed=9)
    first = [next(loader) for _ in range(4)]
    resumed = BatchLoader(windows, batch_size=2, seed=9, start_step=2)
    b = next(resumed)
    assert torch.equal(b.x, first[2].x) and torch.equal(b.docs, first[2].docs)


def test_document_ids_start_a_document_at_each_eos(aligned):
    x = torch.tensor([[0, 5, 6, 0, 7, 0, 0, 8]])
    assert document_ids(x, 0).tolist() == [[1, 1, 1, 2, 2, 3, 4, 4]]
    windows, _, d = aligned
    b = windows.get_batch(seed=0, step=0, batch_size=3)
    assert b.docs.dtype == torch.int32 and torch.equal(b.docs, document_ids(b.x, 0))
    assert (b.docs[:, 0] == 1).all()
    assert TokenWindows(d, "train", 48).get_batch(0, 0, 2).docs is None  # stream windows: causal across documents


def test_cropped_fraction_counts_the_tails_that_did_not_fit(tmp_path):
    rng = np.random.default_rng(0)
    short = _dataset(tmp_path / "short", {"train": [_stream(_documents(rng, 50, 2, 10))]})
    assert DocumentWindows(short, "train", 32).cropped_fraction(seed=0, batch_size=4) < 0.1
    long = _dataset(tmp_path / "long", {"train": [_stream(_documents(rng, 20, 200, 300))]})
    f = DocumentWindows(long, "train", 32).cropped_fraction(seed=0, batch_size=4)
    assert 0.8 < f < 0.9  # a window takes 33 of a document's ~250 (+ its EOS) tokens
