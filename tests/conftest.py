"""Shared fixtures: the shipped T4 lysozyme L99A–p-xylene inputs and small trajectories made from them.

Every trajectory a test needs is written into a temporary folder from the
coordinates of ``complex.pdb`` plus small random displacements, so the tests
need nothing but the files in the repository.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

# The tests' tensors are tiny: one intra-op thread is fastest, and on a busy 2-core machine a second
# OpenMP thread spinning against other processes made a training step 20x slower (measured).
os.environ.setdefault("OMP_NUM_THREADS", "1")  # for the scripts the tests start
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
T4L = ROOT / "data" / "t4l_l99a_xylene"
PRMTOP = T4L / "complex.prmtop"
INPCRD = T4L / "complex-minimized.crd"
PDB = T4L / "complex.pdb"
MOL2 = T4L / "ligand.mol2"
HEME_PDB = ROOT / "tests" / "data" / "19hc.pdb.gz"
N_ATOMS = 2621  # T4L complex with hydrogens
N_LIGAND_HEAVY = 8  # p-xylene


def tiny_molecular_model():
    """A small float64 molecular energy model whose output layer is not zero (so tests have something to see)."""
    from hemeplm.models.molecular import MolecularEnergy

    torch.manual_seed(0)
    model = MolecularEnergy(hidden=16, layers=2, num_rbf=8, cutoff=4.0).double()
    for p in model.out.parameters():  # the last layer starts at zero
        torch.nn.init.normal_(p, std=0.3)
    return model


def write_dcd(path: Path, xyz_nm: np.ndarray) -> Path:
    """Write (F, A, 3) coordinates in nm as a DCD (float32, stores NaN faithfully)."""
    import mdtraj

    with mdtraj.formats.DCDTrajectoryFile(str(path), "w") as fh:
        fh.write(np.asarray(xyz_nm, dtype=np.float32) * 10.0)  # DCD holds Å
    return path


class WritesMarker:
    """An object whose unpickling creates the file ``marker``: what a crafted checkpoint could run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3, 3) uniformly random proper rotations."""
    q, r = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    q[np.linalg.det(q) < 0, :, 0] *= -1
    return q


def rigid_move(xyz: np.ndarray, rng: np.random.Generator, scale: float = 5.0) -> np.ndarray:
    """Each frame of (F, A, 3) ``xyz`` moved by its own random rotation and translation."""
    rot = random_rotations(len(xyz), rng)
    shift = rng.normal(scale=scale, size=(len(xyz), 1, 3))
    return np.einsum("fij,faj->fai", rot, xyz) + shift


def heme_pdb(path: Path, first_of_chain: str | None = None) -> Path:
    """Write the HEM residues of 19hc as a PDB: all 18, or only the first one of chain ``first_of_chain``."""
    lines, first = [], None
    with gzip.open(HEME_PDB, "rt") as fh:
        for line in fh:
            if not (line.startswith("HETATM") and line[17:20] == "HEM"):
                continue
            if first_of_chain is not None:
                if line[21] != first_of_chain or first not in (None, line[22:27]):
                    continue
                first = line[22:27]
            lines.append(line)
    path.write_text("".join(lines) + "END\n")
    return path


@pytest.fixture(scope="session")
def t4l_xyz() -> np.ndarray:
    """(A, 3) coordinates of ``complex.pdb`` in nm, float64."""
    import mdtraj

    return mdtraj.load(str(PDB)).xyz[0].astype(np.float64)


@pytest.fixture(scope="session")
def t4l_frames(t4l_xyz) -> np.ndarray:
    """(12, A, 3) nm: the PDB coordinates with 0.02 nm random displacements per frame."""
    rng = np.random.default_rng(0)
    return t4l_xyz[None] + rng.normal(scale=0.02, size=(12, *t4l_xyz.shape))


@pytest.fixture(scope="session")
def t4l_dcd(tmp_path_factory, t4l_frames) -> Path:
    """A 12-frame DCD of the T4L complex."""
    return write_dcd(tmp_path_factory.mktemp("t4l") / "traj.dcd", t4l_frames)


@pytest.fixture(scope="session")
def t4l_features(t4l_dcd) -> dict:
    """Featurised T4L system (heavy atoms, xylene detected), no cache."""
    from hemeplm.data.dataset import DataConfig, build_features

    return build_features(DataConfig(topology=str(PRMTOP), trajectories=[str(t4l_dcd)]))


@pytest.fixture(scope="session")
def t4l_moved_features(tmp_path_factory, t4l_frames) -> dict:
    """The frames of ``t4l_features``, each moved by its own random rotation and translation, featurised."""
    from hemeplm.data.dataset import DataConfig, build_features

    moved = rigid_move(t4l_frames, np.random.default_rng(1), scale=2.0)
    path = write_dcd(tmp_path_factory.mktemp("t4l_moved") / "moved.dcd", moved)
    return build_features(DataConfig(topology=str(PRMTOP), trajectories=[str(path)]))


def layout_tensors(feats: dict) -> dict:
    """The token layout of featurised ``feats`` as torch tensors."""
    import torch

    return {k: torch.as_tensor(v) for k, v in feats["layout"].items()}


# ----------------------------------------------------------------------------- a tiny system and model
TINY_SELECTION = "(protein and (resSeq 84 to 89 or resSeq 98 to 103)) or resname TMP"
TINY_FRAMES = 40


@pytest.fixture(scope="session")
def tiny_system(tmp_path_factory) -> dict:
    """Twelve pocket residues of T4L L99A around p-xylene (92 + 8 heavy atoms) and 40 noisy frames of them.

    Returns the paths ``topology`` (PDB) and ``trajectory`` (DCD). Beside the DCD, ``energies_forces.npz``
    holds a harmonic restraint to the PDB coordinates (E = k |x - x0|^2, F = -dE/dx, hydrogens included),
    so that the energy model has consistent energies and forces to learn, and each residue's real
    interaction energy with the xylene (the demo prmtop's charges and Lennard-Jones parameters).
    """
    import mdtraj

    from hemeplm.forcefield import labels

    out = tmp_path_factory.mktemp("tiny")
    full = mdtraj.load(str(PDB))
    sub = full.atom_slice(full.topology.select(TINY_SELECTION))
    for atom in sub.topology.atoms:  # renumber: the sliced atoms keep their old serials, which CONECT would not match
        atom.serial = None
    sub.save_pdb(str(out / "tiny.pdb"))
    ref = sub.xyz[0].astype(np.float64)
    xyz = ref[None] + np.random.default_rng(0).normal(scale=0.02, size=(TINY_FRAMES, *ref.shape))
    write_dcd(out / "tiny.dcd", xyz)
    k = 2.0  # kcal/mol/Å^2
    disp = (xyz - ref[None]) * 10.0
    keep = full.topology.select(TINY_SELECTION)
    p = labels.pair_parameters(labels.openmm_system(PRMTOP)[1])
    params = labels.PairParameters(p.charge[keep], p.sigma[keep], p.epsilon[keep], None, None, None, {}, set())
    residue, names = labels.residue_labels(sub.topology)
    inter = labels.residue_interactions(params, xyz * 10.0, residue, sub.topology.select("resname TMP"), len(names))
    np.savez(out / "energies_forces.npz", energy_kcal_mol=k * (disp ** 2).sum(axis=(1, 2)),
             forces_kcal_mol_A=-2 * k * disp, residue_interaction_kcal_mol=inter, residues=np.asarray(names))
    return {"topology": out / "tiny.pdb", "trajectory": out / "tiny.dcd"}


def tiny_overrides(system: dict, out: Path, *overrides: str) -> list[str]:
    """``key=value`` overrides of :func:`tiny_config`."""
    import json

    return [
        f"data.topology={json.dumps(str(system['topology']))}",
        f"data.trajectories={json.dumps([str(system['trajectory'])])}",
        "data.ligand=resname TMP", "data.window=5", f"data.cache_dir={json.dumps(str(out / 'cache'))}",
        f"out_dir={json.dumps(str(out / 'runs'))}", "name=tiny", "wandb.mode=disabled", "device=cpu",
        "encoder.hidden=16", "encoder.layers=1", "encoder.num_rbf=8", "encoder.max_neighbors=8",
        "denoiser.dim=32", "denoiser.depth=1", "denoiser.heads=2", "denoiser.mlp_ratio=2.0",
        "energy.hidden=8", "tasks.upsample_factor=2", "diffusion.timesteps=100", "diffusion.sample_steps=5",
        "diffusion.restarts=1", "optim.batch_size=2", "optim.warmup_steps=1", "max_steps=4", "ckpt_every=2",
        "eval_every=1000", "eval_batches=1", "log_every=1", *overrides]


def tiny_config(system: dict, out: Path, *overrides: str):
    """A Config for a CPU model of a few ten thousand parameters on :func:`tiny_system`, writing under ``out``."""
    from hemeplm.config import load_config

    return load_config(None, tiny_overrides(system, out, *overrides))


@pytest.fixture(scope="session")
def tiny_run(tiny_system, tmp_path_factory) -> dict:
    """:func:`tiny_config` trained 4 steps by ``hemeplm.train.loop.train``.

    Returns ``cfg``, ``run_dir``, ``ckpt`` (its ckpt.pt) and the in-memory ``model`` and ``ema`` at the end.
    """
    from hemeplm.train import loop as training

    cfg = tiny_config(tiny_system, tmp_path_factory.mktemp("tiny_run"))
    seen = {}
    original = training.ema_update

    def capture(ema, model, decay):
        seen.update(ema=ema, model=model)
        original(ema, model, decay)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training, "ema_update", capture)
        run_dir = training.train(cfg)
    return {"cfg": cfg, "run_dir": run_dir, "ckpt": run_dir / "ckpt.pt", **seen}
