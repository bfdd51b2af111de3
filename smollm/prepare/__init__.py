"""Prepare token shards from a corpus: `python -m smollm.prepare --help` (the command:
smollm/cli/prepare.py).

Sources: the Hugging Face dataset HuggingFaceTB/smollm-corpus (config cosmopedia-v2, column text),
streamed; local files (txt: one document per file; jsonl and parquet: one per row; UTF-8, or the run
stops naming the file and line); or the offline default, the Python standard library's own source
files. Documents are tokenized in batches across worker processes, each followed by <|endoftext|>,
and a hashed fraction of documents goes to the validation split.

Resumable: shards are committed one at a time (the train shard, plus the validation documents met
since the last commit as a validation shard of the same index), and meta.json records after each
commit how many source documents are in. A rerun skips those and continues; nothing is duplicated
or lost.

Modules: sources.py (reading corpora), shards.py (meta.json and the shard writer), pool.py (the
tokenizing pool), worker.py (what the worker processes run), run.py (prepare() itself: resume or
start, finish, undo), counts.py (parse_count).

Import each name from its module (smollm.prepare.run.prepare, ...): this module imports none of
them, since a spawned worker imports smollm.prepare.worker, and so this module first; importing
run.py here would give every worker torch (through smollm.data) and the rest.
"""
