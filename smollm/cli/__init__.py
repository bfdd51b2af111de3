"""The command lines, one module each, apart from the library they drive (which never imports them):
train (train.py, with its commands plot and export), generate (generate.py), app (app.py), prepare
(python -m smollm.prepare). Each parses its arguments from light modules only and imports the library
after, so --help and a mistyped flag answer at once: torch, transformers and gradio take 2 s to import
on an idle 2-core machine and tens of seconds on a loaded one."""

from __future__ import annotations

import argparse


class Parser(argparse.ArgumentParser):
    """An argument error on one line, as every user error of the project (smollm/errors.py): the
    usage block that argparse prints first is a --help away."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")
