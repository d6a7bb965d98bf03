"""Generate trajectories with a trained checkpoint: ``python sample.py --help`` (the options of
:mod:`hemeplm.cli.sample`)."""

from hemeplm.cli.sample import main

if __name__ == "__main__":
    main()
