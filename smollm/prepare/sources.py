"""The corpora prepare reads, each as (a description for meta.json, an iterator of documents that can
start after the documents a previous run took): the standard library's sources (the offline default),
local files (txt: one document per file; jsonl and parquet: one per row; UTF-8, or the run stops
naming the file and line) and a Hugging Face dataset, streamed."""

from __future__ import annotations

import glob
import json
import os
import sysconfig
from collections.abc import Iterator

HF_DATASET = "HuggingFaceTB/smollm-corpus"
HF_CONFIG = "cosmopedia-v2"


def stdlib_files() -> tuple[str, list[str]]:
    """The standard library's UTF-8 .py files, sorted, without site-/dist-packages (their contents
    differ from machine to machine). A few test files are deliberately not UTF-8: left out."""
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for path in glob.glob(os.path.join(root, "**", "*.py"), recursive=True):
        rel = os.path.relpath(path, root)
        if not {"site-packages", "dist-packages"} & set(rel.split(os.sep)) and _read_text(path) is not None:
            files.append(rel)
    return root, sorted(files)


def _read_text(path: str) -> str | None:
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None  # a few stdlib test files are deliberately not UTF-8


def _decode(data: bytes, path: str, line: int | None = None) -> str:
    """`data` as UTF-8; invalid UTF-8 raises, naming the file, line and byte (the policy: local files
    must be UTF-8, nothing is dropped or replaced without a word)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        where = f"{line}:{e.start + 1}" if line is not None else str(data.count(b"\n", 0, e.start) + 1)
        raise ValueError(f"{path}:{where}: not valid UTF-8 (byte {data[e.start]:#04x}); re-encode the file as "
                         f"UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def iter_stdlib(skip: int = 0) -> Iterator[str]:
    root, files = stdlib_files()
    for rel in files[skip:]:
        yield _read_text(os.path.join(root, rel))


def expand_globs(patterns: list[str]) -> list[str]:
    files = []
    for pattern in patterns:
        matched = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not matched:
            raise FileNotFoundError(f"source {pattern!r} matches no file")
        files += [m for m in matched if os.path.isfile(m)]
    for path in files:  # checked before anything starts, not when the run reaches the file
        if not path.endswith((".txt", ".jsonl", ".parquet")):
            raise ValueError(f"{path}: unsupported file type (txt, jsonl or parquet)")
    return files


def iter_local(files: list[str], column: str, skip: int = 0) -> Iterator[str]:
    seen = 0
    for path in files:
        if path.endswith(".txt"):
            with open(path, "rb") as f:
                docs = [_decode(f.read(), path)]
        elif path.endswith(".jsonl"):
            docs = _jsonl_column(path, column)
        elif path.endswith(".parquet"):
            docs = _parquet_column(path, column)
        else:
            raise ValueError(f"{path}: unsupported file type (txt, jsonl or parquet)")
        for doc in docs:
            if seen >= skip:
                yield doc
            seen += 1


def _jsonl_column(path: str, column: str) -> Iterator[str]:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            line = _decode(raw, path, n)
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: a JSON {_json_kind(row)} ({line.strip()[:40]}), not an object with a "
                                 f"{column!r} column; each line of a .jsonl source is one document's object")
            if column not in row:
                raise KeyError(f"{path}:{n}: no column {column!r} (columns: {sorted(row)})")
            yield _text(row[column], f"{path}:{n}", column)


def _parquet_column(path: str, column: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if column not in pf.schema_arrow.names:
        raise KeyError(f"{path}: no column {column!r} (columns: {pf.schema_arrow.names})")
    n = 0
    for batch in pf.iter_batches(columns=[column], batch_size=1024):
        for value in batch.column(0).to_pylist():
            n += 1
            yield _text(value, f"{path}: row {n}", column)


def _json_kind(value) -> str:
    return {type(None): "null", bool: "true/false", int: "number", float: "number", str: "string",
            list: "array"}.get(type(value), type(value).__name__)


def _text(value, where: str, column: str) -> str:
    """A document's text; anything else is one line naming the file and line (or row)."""
    if value is None:
        raise ValueError(f"{where}: column {column!r} is null, not text")
    if not isinstance(value, str):
        try:
            shown = json.dumps(value)[:40]
        except TypeError:  # parquet's bytes, dates, ...
            shown = repr(value)[:40]
        raise ValueError(f"{where}: column {column!r} is {_json_kind(value)} {shown}, not text")
    return value


def iter_hf(dataset: str, config: str | None, column: str, skip: int = 0) -> Iterator[str]:
    """Streams a Hugging Face dataset (a hub id, or a local dataset directory) without downloading it whole."""
    from datasets import load_dataset

    try:
        if not os.path.isdir(dataset):
            # One quick look first: unreachable, datasets retries with back-off for half a minute.
            from huggingface_hub import HfApi

            HfApi().dataset_info(dataset, timeout=10)
        ds = load_dataset(dataset, config, split="train", streaming=True)
    except Exception as e:
        raise OSError(f"cannot stream {dataset}/{config} from the Hugging Face Hub ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}); offline, use --source stdlib or local files") from e
    if ds.column_names is not None and column not in ds.column_names:
        raise KeyError(f"{dataset}/{config}: no column {column!r} (columns: {ds.column_names})")
    yield from (row[column] for row in ds.skip(skip))


def open_source(source: list[str], column: str, skip: int) -> tuple[dict, Iterator[str]]:
    """(description for meta.json, document iterator starting after `skip` documents)."""
    if source == ["stdlib"]:
        root, files = stdlib_files()
        return {"kind": "stdlib", "root": root, "files": files}, iter_stdlib(skip)
    if len(source) == 1 and (source[0] == "hf" or source[0].startswith("hf:")):
        # hf -> the default corpus; hf:NAME or hf:NAME:CONFIG (NAME: a hub id or a local dataset directory)
        parts = source[0][3:].split(":") if source[0] != "hf" else [HF_DATASET, HF_CONFIG]
        dataset, config = parts[0], (parts[1] if len(parts) > 1 else None)
        return {"kind": "hf", "dataset": dataset, "config": config, "column": column}, \
            iter_hf(dataset, config, column, skip)
    files = expand_globs(source)
    return {"kind": "files", "files": [os.path.abspath(f) for f in files], "column": column}, \
        iter_local(files, column, skip)
