"""Train HemePLM-Diffuse.

    python train.py [--config configs/demo.yaml] [--resume] [--dry-run] [key=value ...]

Writes runs/NAME/: ckpt.pt, config.yaml, metrics.jsonl (and wandb, offline by default).
Under torchrun, every rank trains and rank 0 logs and saves.
"""

import argparse
import logging
import sys

from hemeplm.cli import HelpFormatter
from hemeplm.config import load_config
from hemeplm.errors import HemeplmError
from hemeplm.train.loop import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--config", default="configs/demo.yaml",
                   help="YAML file layered over the values in hemeplm/config.py")
    p.add_argument("--resume", action="store_true",
                   help="continue runs/NAME/ckpt.pt (same config); without it an existing run is an error")
    p.add_argument("--dry-run", action="store_true", help="build everything, print the parameter count, exit")
    p.add_argument("overrides", nargs="*",
                   help="config key=value (dotted keys, YAML values), e.g. name=test max_steps=100 data.ligand=none")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        train(cfg, resume=args.resume, dry_run=args.dry_run)
    except HemeplmError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
