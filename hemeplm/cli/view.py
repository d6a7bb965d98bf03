"""``hemeplm view``: a self-contained HTML page playing trajectories side by side."""

from __future__ import annotations

from hemeplm.cli.options import HelpFormatter, add_truncated_option, count, positive
from hemeplm.viewer import MAX_FRAMES, view_files


def add_parser(sub) -> None:
    """Add ``hemeplm view`` to the ``hemeplm`` subparsers."""
    v = sub.add_parser("view", formatter_class=HelpFormatter, help="write a self-contained HTML page playing trajectories side by side",
                       description="Write one HTML file (no network needed to open it) with a 3D viewer per "
                                   "trajectory: protein cartoon coloured per residue, ligand as sticks, a "
                                   "frame slider and a play button driving all panels on one time axis.")
    v.add_argument("topology")
    v.add_argument("trajectories", nargs="+", help="one panel each")
    v.add_argument("--out", required=True, help="the HTML file to write")
    v.add_argument("--force", action="store_true", help="overwrite an existing --out")
    v.add_argument("--reference", nargs="*", default=[], help="reference MD trajectories, one panel each")
    v.add_argument("--reference-topology", default=None, help="topology of --reference (default: TOPOLOGY)")
    v.add_argument("--reference-start", type=count(0), default=0, help="first reference frame shown (time 0)")
    v.add_argument("--ligand", default=None, help="mdtraj selection; unset = detect")
    v.add_argument("--values", default="rmsf",
                   help="per-residue colouring: rmsf (Cα RMSF of each panel, default), none, a CSV "
                        "(one value per residue), FILE.npz or FILE.npz:KEY ((R,) or (F, R), averaged over frames)")
    v.add_argument("--max-frames", type=count(1), default=MAX_FRAMES, help="frames kept per panel (evenly strided)")
    v.add_argument("--timestep-ps", type=positive, default=None, help="frame spacing (default: from the files)")
    add_truncated_option(v)
    v.set_defaults(func=run)


def run(args) -> None:
    out = view_files(args.topology, args.trajectories, args.out, args.reference, args.reference_topology,
                     args.ligand, args.values, args.max_frames, args.timestep_ps, args.reference_start,
                     force=args.force, truncated=args.truncated or "error")
    print(out)
