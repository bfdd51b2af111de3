"""Whose remote copy a store is, so that a run writes only to its own.

A run has an identity, <run>/run.json (smollm.runs.RUN_ID): {"id": random hex made when the run first
starts, "home": the directory it started in or was fetched into, "remote": the URL it was fetched from,
or null}. A copy of the directory (cp -r) carries the same id to another place: a copy is told apart
from its original by where it is, not by what it holds.

A store records the run directory that writes it, <url>/owner.json (smollm.runs.OWNER): {"id", "path",
"host"}, written before the first upload. A run may write to a store that
- holds nothing yet (it becomes this run's copy), or
- is this run's: the same id, and the same path, or this directory was fetched from that URL
  (--resume URL on a new machine takes the copy over), or the path it names, on this host, no longer
  holds the run (the run directory was moved).
Anything else is refused in one line before any upload: a store holding another run (another id; or
checkpoints and no owner.json, for a new run), and a store that is the copy of this run's original
while this directory is a copy of it (it would overwrite the original's checkpoints and `latest`).
"""

from __future__ import annotations

import json
import os
import socket
import uuid

from smollm.files import atomic_write_text
from smollm.remote.store import RemoteError, Store, describe, retry
from smollm.runs import OWNER, Run


def read_identity(run_dir: str) -> dict | None:
    """<run>/run.json, or None when there is none (a run from before identities) or it is unreadable."""
    try:
        with open(Run(run_dir).identity) as f:
            ident = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(ident, dict) or not isinstance(ident.get("id"), str) or not isinstance(ident.get("home"), str):
        return None
    return ident


def identity_for_start(run_dir: str, fresh: bool) -> dict:
    """The identity a start of the run at run_dir has: the one it holds (a new run keeps it only in its
    own home: a directory without checkpoints that a start which failed early left), else a new one."""
    here = os.path.realpath(run_dir)
    ident = read_identity(run_dir)
    if ident is not None and (not fresh or ident["home"] == here):
        return ident
    return {"id": uuid.uuid4().hex, "home": here, "remote": None}


def write_identity(run_dir: str, ident: dict) -> None:
    atomic_write_text(Run(run_dir).identity, json.dumps(ident, indent=1) + "\n")


def owner_record(ident: dict, run_dir: str) -> dict:
    """What owner.json of the store a run writes says."""
    return {"id": ident["id"], "path": os.path.realpath(run_dir), "host": socket.gethostname()}


def read_owner(store: Store) -> dict | None:
    """The store's owner.json; None when it has none. One line (RemoteError) when it is unreadable."""
    try:
        data = retry(lambda: store.read(OWNER))
    except FileNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001 -- the store's own errors
        raise RemoteError(f"log.remote: cannot read {store.url}/{OWNER} ({describe(e)})") from None
    try:
        owner = json.loads(data)
        if not all(isinstance(owner.get(k), str) for k in ("id", "path", "host")):
            raise ValueError("no id, path and host")
    except (ValueError, AttributeError) as e:
        raise RemoteError(f"log.remote: {store.url}/{OWNER} is not an owner record ({e}); the store's owner cannot "
                          f"be told: choose another log.remote=URL") from None
    return owner


def _holds_run(path: str, run_id: str) -> bool:
    ident = read_identity(path)
    return ident is not None and ident["id"] == run_id


def check_owner(store: Store, ident: dict, run_dir: str, fresh: bool) -> str | None:
    """RemoteError (one line) unless the run at run_dir may write to store; a line to say when it takes
    the store over from another directory, else None."""
    url, here = store.url, os.path.realpath(run_dir)
    owner = read_owner(store)
    try:
        done = [n for _, n in store.checkpoints()]
    except Exception as e:  # noqa: BLE001
        raise RemoteError(f"log.remote: cannot read {url} ({describe(e)})") from None
    if fresh and done:
        whose = f"the copy of {owner['path']} on {owner['host']}" if owner else "no owner.json"
        raise RemoteError(f"log.remote: {url} already holds a run ({whose}; checkpoints up to {done[-1]}); a new run "
                          f"never writes over one: choose another log.remote=URL")
    if owner is None:
        return (f"note: remote: {url} holds checkpoints up to {done[-1]} and no {OWNER} (written before runs recorded "
                f"it); taking it as this run's copy") if done else None
    if owner["id"] != ident["id"]:
        raise RemoteError(f"log.remote: {url} holds another run (the copy of {owner['path']} on {owner['host']}); a "
                          f"run writes only to its own remote copy: choose another log.remote=URL")
    if owner["path"] == here:
        return None
    if ident.get("remote") == url and ident["home"] == here:
        return (f"remote: {url} was the copy of {owner['path']} on {owner['host']}; this run, fetched from it, now "
                f"writes it")
    if owner["host"] == socket.gethostname() and not _holds_run(owner["path"], ident["id"]):
        return f"remote: {url} was the copy of {owner['path']}, which no longer holds the run; {here} now writes it"
    raise RemoteError(f"log.remote: {url} is the remote copy of the run at {owner['path']} on {owner['host']}, and "
                      f"{here} is a copy of that run; give the copy its own log.remote=URL (or log.remote= for none)")


def claim(store: Store, record: dict) -> None:
    """owner.json of the store set to record (owner_record), unless it already says so."""
    if read_owner(store) != record:
        retry(lambda: store.write(OWNER, (json.dumps(record, indent=1) + "\n").encode()))


def check_not_own_copy(store: Store, run_dir: str, remote: str | None) -> None:
    """RemoteError when store is the remote copy of the run at run_dir (its owner.json names the run,
    or it is the run's log.remote): `train.py export RUN URL --overwrite` would replace the run's copy,
    as `export RUN RUN` would the run."""
    ident, owner = read_identity(run_dir), read_owner(store)
    mine = owner is not None and ident is not None and owner["id"] == ident["id"]
    if mine or (remote and remote.rstrip("/") == store.url.rstrip("/")):
        raise RemoteError(f"refusing to export to {store.url}: it is the remote copy of the run {run_dir} itself "
                          f"(replacing it would delete the run's copy); choose another URL")
