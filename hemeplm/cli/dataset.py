"""``hemeplm dataset``: a molecule data set built, sampled and labelled with GFN2-xTB from nothing downloaded."""

from __future__ import annotations

import json
import logging

from hemeplm.cli.options import HelpFormatter, add_output_flags, count, positive
from hemeplm.data.molecules import FRAGMENT_SETS, MOLECULES
from hemeplm.forcefield.fragmentation import make_fragment_datasets
from hemeplm.forcefield.qm import make_dataset


def add_parser(sub) -> None:
    """Add ``hemeplm dataset`` to the ``hemeplm`` subparsers."""
    ds = sub.add_parser("dataset", help="a molecule's GFN2-xTB data set (build, sample, label, split)",
                        formatter_class=HelpFormatter,
                        description="Build a molecule (RDKit from SMILES, or PeptideBuilder + Amber14 hydrogens for "
                                    "the peptides), sample it at each temperature (GFN2-xTB Langevin dynamics for "
                                    "small molecules, Amber14 + OBC2 implicit solvent for peptides), label every "
                                    "kept frame with GFN2-xTB energies and forces, and split each run into "
                                    "contiguous time blocks (80% train, 10% val, 10% test). Writes OUT/topology.pdb, "
                                    "traj.dcd, energies_forces.npz and dataset.json (settings and cost). A fragment "
                                    "set (chignolin-fragments) samples its peptide, cuts every frame into AI2BMD's "
                                    "ACE-X-NME units and ACE-NME overlaps and writes one such data set per fragment "
                                    "(OUT/NN-NAME/), listed in OUT/fragments.json.")
    ds.add_argument("--molecule", required=True, choices=list(MOLECULES) + list(FRAGMENT_SETS))
    ds.add_argument("--out", default=None, help="output folder (unset: data/qm/MOLECULE)")
    ds.add_argument("--temperatures", type=positive, nargs="+", default=None,
                    help="K, one run each (unset: 300 600 for small molecules, 300 450 for peptides)")
    ds.add_argument("--frames", type=count(10), default=None, help="frames kept per run (unset: per molecule)")
    ds.add_argument("--stride", type=count(1), default=None, help="MD steps between kept frames (unset: per molecule)")
    ds.add_argument("--equilibration", type=count(0), default=None,
                    help="MD steps discarded at the start of each run (unset: per molecule)")
    ds.add_argument("--seed", type=int, default=None,
                    help="random seed (conformer embedding and dynamics; unset: 0, a fragment set's 1)")
    add_output_flags(ds, "overwrite an existing data set")
    ds.set_defaults(func=run)


def run(args) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = args.out or f"data/qm/{args.molecule}"
    settings = (args.temperatures, args.frames, args.stride, args.equilibration)
    if args.molecule in FRAGMENT_SETS:
        out = make_fragment_datasets(args.molecule, out, *settings, args.seed, args.force, progress=not args.quiet)
        index = json.loads((out / "fragments.json").read_text())
        print(f"{out}: {len(index['fragments'])} fragments, cost {index['cost_s']} s ({index['machine']})")
        return
    out = make_dataset(args.molecule, out, *settings, args.seed or 0, args.force, progress=not args.quiet)
    meta = json.loads((out / "dataset.json").read_text())
    print(f"{out}: {sum(meta['split_counts'].values())} frames {meta['split_counts']}, "
          f"cost {meta['cost_s']} s ({meta['machine']})")
