"""Writing bench/results/ files atomically, with the same temp-file-then-rename writer as the shards,
so a killed run never leaves half a report."""

import os

from smollm.files import atomic_write_bytes


def write_results(out_dir: str, name: str, files: dict[str, str]) -> None:
    """files: extension -> text; writes out_dir/name.<ext> for each."""
    os.makedirs(out_dir, exist_ok=True)
    for ext, text in files.items():
        atomic_write_bytes(os.path.join(out_dir, f"{name}.{ext}"), [text.encode()])
