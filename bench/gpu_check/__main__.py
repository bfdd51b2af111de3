"""`python -m bench.gpu_check` (bench/gpu.sh runs it): the check, its budget counted from the package's import
(bench.gpu_check.START, taken before torch is imported)."""

import sys

from bench.gpu_check import START
from bench.gpu_check.cli import main

if __name__ == "__main__":
    # prog: the name argparse gave the check when it was one file, bench/gpu_check.py (not "__main__.py")
    sys.exit(main(start=START, prog="gpu_check.py"))
