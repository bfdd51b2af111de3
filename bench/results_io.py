"""Writing bench/results/ files: atomically (temp file, then rename), so a killed run never leaves
half a report."""

import os


def write_results(out_dir: str, name: str, files: dict[str, str]) -> None:
    """files: extension -> text; writes out_dir/name.<ext> for each."""
    os.makedirs(out_dir, exist_ok=True)
    for ext, text in files.items():
        tmp = os.path.join(out_dir, f".{name}.{ext}.tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(out_dir, f"{name}.{ext}"))
