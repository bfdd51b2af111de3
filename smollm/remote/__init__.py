"""A run's copy in a remote store, for machines that can vanish with their disk (spot instances):
any fsspec URL (s3://bucket/prefix, gs://..., file:///...; S3 through s3fs, the `remote` extra).

The copy has the run directory's own layout (smollm.runs) under the URL: the run's files
(config.yaml, metrics.jsonl, samples.*, loss.png, train.log) and checkpoints/step_N/ for each
checkpoint, whose checkpoint.json (the sha256 of its other files) is uploaded after them. The remote
checkpoints/latest is written after everything else, so a reader that follows it never finds a
checkpoint still being uploaded; a checkpoint without its checkpoint.json is not finished.

Uploader mirrors a local run from one background thread (training never waits on the network):
after each checkpoint, every checkpoint not yet there, the run's files, the trainer states the local
run keeps, then `latest`. Each transfer is retried with back-off; a store that stays unreachable is
one warning per checkpoint and the run goes on (the next pass uploads what is missing).
fetch_run() brings a run back for --resume; fetch_weights() the weights of its latest checkpoint
for generate.py and the app (cached).

Credentials come from where the store's own library looks (for S3: the environment, ~/.aws
profiles, an instance role), never from this project's config, which is saved with every checkpoint:
storage options that name a secret are refused.
"""

from smollm.remote.fetch import cache_dir, fetch_run, fetch_weights
from smollm.remote.store import (BACKOFF, RETRIES, RemoteError, Store, check_options, check_writable, connect, describe,
                                 is_url, retry)
from smollm.remote.upload import Uploader, upload_dir

__all__ = ["BACKOFF", "RETRIES", "RemoteError", "Store", "Uploader", "cache_dir", "check_options", "check_writable",
           "connect", "describe", "fetch_run", "fetch_weights", "is_url", "retry", "upload_dir"]
