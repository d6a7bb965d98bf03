"""Train HemePLM-Diffuse: ``python train.py --help`` (the options of :mod:`hemeplm.cli.train`)."""

from hemeplm.cli.train import main

if __name__ == "__main__":
    main()
