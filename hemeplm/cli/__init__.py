"""The ``hemeplm`` command: one module per subcommand, each with ``add_parser(sub)`` and ``run(args)``.

``train.py`` and ``sample.py`` in the repository root are :func:`hemeplm.cli.train.main` and
:func:`hemeplm.cli.sample.main`; ``hemeplm train`` and ``hemeplm sample`` take the same options.
Errors of type :class:`~hemeplm.errors.HemeplmError` are printed as one line and exit 2.
"""

from __future__ import annotations

import argparse

from hemeplm import __version__
from hemeplm.cli import (bench, dataset, energies, evaluate, inspect, label, relax, sample, simulate,
                         train, view)
from hemeplm.cli.options import COMPLETE_FILES_HINTS, HelpFormatter, exit_on_error

#: in the order ``hemeplm --help`` lists them
SUBCOMMANDS = (inspect, simulate, label, dataset, train, sample, evaluate, view, energies, relax, bench)
EPILOG = """training and sampling are also scripts in the repository root:
  python train.py [--config configs/demo.yaml] [key=value ...]   as hemeplm train
  python sample.py --ckpt runs/NAME/ckpt.pt --task forecast ...   as hemeplm sample
(see python train.py --help and python sample.py --help)"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hemeplm", description="Generative surrogate of protein–ligand MD.",
                                epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for command in SUBCOMMANDS:
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    exit_on_error(f"hemeplm {args.command}", lambda: args.func(args), getattr(args, "hints", COMPLETE_FILES_HINTS))

