"""Train HemePLM-Diffuse.

    python train.py [--config configs/demo.yaml] [--resume] [--dry-run] [key=value ...]
    hemeplm train   (the same options)

Writes runs/NAME/: ckpt.pt, config.yaml, metrics.jsonl (and wandb, offline by default).
A config that sets qm.molecule (configs/qm_*.yaml) trains the molecular energy model instead and
also writes runs/NAME/test_metrics.json.
Under torchrun, every rank trains and rank 0 logs and saves.
"""

from __future__ import annotations

import argparse
import logging

from hemeplm.cli.options import HelpFormatter, exit_on_error
from hemeplm.config import load_config
from hemeplm.train.loop import train
from hemeplm.train.molecular import train_molecular


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/demo.yaml",
                   help="YAML file layered over the values in hemeplm/config.py")
    p.add_argument("--resume", action="store_true",
                   help="continue runs/NAME/ckpt.pt (same config); without it an existing run is an error")
    p.add_argument("--dry-run", action="store_true", help="build everything, print the parameter count, exit")
    p.add_argument("overrides", nargs="*",
                   help="config key=value (dotted keys, YAML values), e.g. name=test max_steps=100 data.ligand=none")


def add_parser(sub) -> None:
    """Add ``hemeplm train`` to the ``hemeplm`` subparsers."""
    p = sub.add_parser("train", help="learn from trajectories (as python train.py)", description=__doc__,
                       formatter_class=HelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run, hints={})  # the loader's advice, data.truncated=warn, is a key train takes


def run(args) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, args.overrides)
    # a config with qm.molecule trains the molecular energy model on those molecules' data sets
    (train_molecular if cfg.qm.molecule else train)(cfg, resume=args.resume, dry_run=args.dry_run)


def main(argv: list[str] | None = None) -> None:
    """``python train.py``."""
    p = argparse.ArgumentParser(prog="train.py", description=__doc__, formatter_class=HelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    exit_on_error("train.py", lambda: run(args))
