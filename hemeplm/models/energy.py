"""A smooth learnt energy for one system: classical terms with learnt parameters plus a
message-passing correction, and per-residue protein–ligand interaction energies.

Total potential energy of a frame (kcal/mol, relative to the training mean)::

    E(x) = Σ_bonds k_b (d − d0)² + Σ_angles k_a (cos θ − cos θ0)²
         + Σ_{pairs, d < cutoff, not 1-2/1-3/1-4} S(d) [s·Coulomb + LJ](d)  learnt q, σ, ε per atom
                                                                         and solvent screening s
         + Σ_atoms u_i(h)                                               message passing on a radius graph

Interaction energy of protein residue r with the ligand (kcal/mol)::

    I_r(x) = Σ_{i∈r, j∈L} [Coulomb + LJ](d_ij)          every pair, no cutoff, the same learnt q, σ, ε
           + Σ_{i∈r, j∈L, d < cutoff} φ(h_i, h_j, d) env(d) + b_r

Forces are ``−∂E/∂x``. Everything is a smooth function of the coordinates: the graph is a plain
radius graph (no neighbour cap inside the cutoff: a cap that would drop an edge is an error),
every learnt edge term is multiplied by an envelope that goes to zero with its derivative at the
cutoff, and there are no edge types that switch. Distances inside the 1/r terms are softened,
``sqrt(d² + δ²)``, so that generated frames with overlapping atoms give large but finite values.

Shapes: F frames, A atoms, R protein residues, L ligand atoms, E edges, C hidden width.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hemeplm.data.parameters import coulomb_lj
from hemeplm.models.encoder import cosine_cutoff

SOFTEN_A = 0.25  # δ in sqrt(d² + δ²) of the 1/r terms, Å
#: starting values of the learnt force constants (kcal/mol/Å², kcal/mol per unit cos²) and of the
#: Lennard-Jones σ (Å) and ε (kcal/mol) of hydrogens and heavier atoms (typical force-field values)
BOND_K, ANGLE_K = 300.0, 100.0
SIGMA_H, EPSILON_H, SIGMA_HEAVY, EPSILON_HEAVY = 2.0, 0.02, 3.4, 0.1
SOFT_H_BONDS = 0.01  # bonds to hydrogen start at this fraction of BOND_K
#: starting Coulomb scale inside the total energy: solvent screens charges (1/ε_r of water); learnt.
#: The interaction energies keep the vacuum Coulomb of their definition.
SCREENING = 1.0 / 80.0
#: units of the learnt offsets: bond lengths (Å), angle cosines and charges (e) move by about the
#: learning rate times these per step (bond lengths must settle to a few thousandths of an Å)
OFFSET_UNITS = {"length": 0.01, "cosine": 0.01, "charge": 0.1}
MAX_NEIGHBORS = 1024  # radius-graph buffer per atom; reaching it is an error, never a silent cut


def radius_pairs(pos: torch.Tensor, cutoff: float, batch: torch.Tensor | None = None) -> torch.Tensor:
    """All ordered pairs closer than ``cutoff``: (A, 3) -> (2, E) ``[src, dst]``, both directions.

    Raises RuntimeError if an atom has as many neighbours as the search buffer holds, so no edge
    inside the cutoff is ever dropped.
    """
    from torch_cluster import radius_graph

    ei = radius_graph(pos.detach(), cutoff, batch=batch, loop=False, max_num_neighbors=MAX_NEIGHBORS)
    if ei.numel() and int(torch.bincount(ei[1]).max()) >= MAX_NEIGHBORS:
        raise RuntimeError(f"an atom has {MAX_NEIGHBORS} neighbours within {cutoff} Å: lower energy.cutoff")
    return ei


def gaussian_rbf(d: torch.Tensor, cutoff: float, n: int) -> torch.Tensor:
    """(E,) distances -> (E, n) Gaussians centred on [0, cutoff]."""
    centres = torch.linspace(0.0, cutoff, n, device=d.device, dtype=d.dtype)
    width = cutoff / (n - 1)
    return torch.exp(-0.5 * ((d[:, None] - centres) / width) ** 2)


def pair_energy(d: torch.Tensor, qq: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Coulomb (vacuum) + Lennard-Jones of pairs at distance d (Å), charge products qq (e²),
    combined σ (Å) and ε (kcal/mol); all (E,) -> (E,) kcal/mol."""
    return coulomb_lj(qq, sigma, eps, torch.sqrt(d * d + SOFTEN_A ** 2))


class Interaction(nn.Module):
    """One continuous-filter convolution (SchNet-style), smooth in the coordinates.

    ``forward(h (A, C), edge_index (2, E), rbf (E, K), env (E,))`` returns the updated h (A, C).
    """

    def __init__(self, hidden: int, n_rbf: int):
        super().__init__()
        self.filter = nn.Sequential(nn.Linear(n_rbf, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.lin_in = nn.Linear(hidden, hidden, bias=False)
        self.update = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, h, edge_index, rbf, env):
        src, dst = edge_index
        msg = self.lin_in(h)[src] * self.filter(rbf) * env[:, None]
        agg = torch.zeros_like(h).index_add_(0, dst, msg)
        return h + self.update(agg)


class EnergyModel(nn.Module):
    """Learnt energy, forces and per-residue interaction energies of one system.

    Args:
        static: per-atom arrays (A,): ``charge`` (e), ``atom_type``, ``element``, ``is_ligand``,
            ``protein_residue`` (-1 outside the protein), ``bonds`` (2, B); ``reference`` (A, 3) Å,
            the first training frame (bond lengths and angles start there).
        n_residues: R, protein residues with interaction energies.
        n_atom_types, n_elements: embedding sizes.
        hidden, layers, n_rbf, cutoff: the message-passing correction; ``cutoff`` (Å) also bounds
            the total energy's non-bonded pairs.

    ``forward(pos (F, A, 3))`` returns ``total`` (F,) (relative, add the training mean) and
    ``interaction`` (F, R), kcal/mol. Per-atom charges start at the topology's (hydrogens folded
    onto heavy atoms when hydrogens are not modelled); σ, ε, force constants and corrections are learnt.
    """

    def __init__(self, static: dict, n_residues: int, n_atom_types: int, n_elements: int, hidden: int = 32,
                 layers: int = 2, n_rbf: int = 16, cutoff: float = 5.0):
        super().__init__()
        self.cutoff, self.n_rbf, self.n_residues = cutoff, n_rbf, n_residues
        charge = torch.as_tensor(static["charge"], dtype=torch.float32)
        is_h = torch.as_tensor(static["element"]) == 0
        n = len(charge)
        self.register_buffer("is_ligand", torch.as_tensor(static["is_ligand"], dtype=torch.bool), persistent=False)
        self.register_buffer("protein_residue", torch.as_tensor(static["protein_residue"]), persistent=False)
        self.register_buffer("protein_atoms", torch.nonzero(self.protein_residue >= 0).flatten(), persistent=False)
        self.register_buffer("ligand_atoms", torch.nonzero(self.is_ligand).flatten(), persistent=False)
        self.register_buffer("atom_type", torch.as_tensor(static["atom_type"]), persistent=False)
        self.register_buffer("element", torch.as_tensor(static["element"]), persistent=False)
        bonds = torch.as_tensor(static["bonds"], dtype=torch.long).reshape(2, -1)
        angles = _angles(bonds, n)
        self.register_buffer("bonds", bonds, persistent=False)
        self.register_buffer("angles", angles, persistent=False)
        excl = torch.cat([bonds, angles[[0, 2]], _torsion_ends(bonds, n)], 1)
        self.register_buffer("excluded", torch.unique(torch.cat([excl[0] * n + excl[1], excl[1] * n + excl[0]])),
                             persistent=False)
        ref = torch.as_tensor(static["reference"], dtype=torch.float32)
        # every parameter is stored so that one optimiser step (of about the learning rate) is a sensible
        # change: positive ones as logarithms around typical values, equilibrium lengths and cosines
        # and charges as offsets in units of OFFSET_UNITS from the reference frame and topology
        self.register_buffer("bond_ref", (ref[bonds[0]] - ref[bonds[1]]).norm(dim=-1), persistent=False)
        self.register_buffer("angle_ref", _cos_angle(ref, angles), persistent=False)
        self.register_buffer("charge_ref", charge, persistent=False)
        self.bond_shift = nn.Parameter(torch.zeros(bonds.shape[1]))
        self.angle_shift = nn.Parameter(torch.zeros(angles.shape[1]))
        self.charge_shift = nn.Parameter(torch.zeros(n))
        # bonds to hydrogen are usually constrained in MD (no force in the labels): they start soft
        to_h = is_h[bonds[0]] | is_h[bonds[1]]
        self.log_bond_k = nn.Parameter(torch.where(to_h, math.log(SOFT_H_BONDS), 0.0))
        self.log_angle_k = nn.Parameter(torch.zeros(angles.shape[1]))
        self.register_buffer("sigma0", torch.where(is_h, SIGMA_H, SIGMA_HEAVY).float(), persistent=False)
        self.register_buffer("epsilon0", torch.where(is_h, EPSILON_H, EPSILON_HEAVY).float(), persistent=False)
        self.log_sigma = nn.Parameter(torch.zeros(n))
        self.log_eps = nn.Parameter(torch.zeros(n))
        self.log_screening = nn.Parameter(torch.zeros(()))
        self.embed_type = nn.Embedding(n_atom_types, hidden)
        self.embed_element = nn.Embedding(n_elements, hidden)
        self.embed_ligand = nn.Embedding(2, hidden)
        self.layers = nn.ModuleList(Interaction(hidden, n_rbf) for _ in range(layers))
        self.atom_out = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        self.pair_a = nn.Linear(hidden, hidden, bias=False)
        self.pair_b = nn.Linear(hidden, hidden, bias=False)
        self.pair_rbf = nn.Linear(n_rbf, hidden)
        for lin in (self.atom_out[-1], self.pair_rbf):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.residue_offset = nn.Parameter(torch.zeros(n_residues))

    # --------------------------------------------------------------- parts
    def _features(self, f: int, edge_index: torch.Tensor, rbf: torch.Tensor, env: torch.Tensor) -> torch.Tensor:
        """Atom features (F·A, C) of F frames from their flat radius graph (2, E), its distances'
        Gaussians (E, n_rbf) and envelope (E,)."""
        h = (self.embed_type(self.atom_type) + self.embed_element(self.element)
             + self.embed_ligand(self.is_ligand.long())).repeat(f, 1)
        for layer in self.layers:
            h = layer(h, edge_index, rbf, env)
        return h

    def _bonded(self, pos: torch.Tensor) -> torch.Tensor:
        """(F, A, 3) -> (F,) bond and angle energies."""
        b = self.bonds
        d = (pos[:, b[0]] - pos[:, b[1]]).norm(dim=-1)
        d0 = self.bond_ref + OFFSET_UNITS["length"] * self.bond_shift
        e = (BOND_K * self.log_bond_k.exp() * (d - d0) ** 2).sum(-1)
        if self.angles.shape[1]:
            c = _cos_angle(pos, self.angles)
            c0 = self.angle_ref + OFFSET_UNITS["cosine"] * self.angle_shift
            e = e + (ANGLE_K * self.log_angle_k.exp() * (c - c0) ** 2).sum(-1)
        return e

    def parameters_lj(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(A,) charges (e), σ (Å), ε (kcal/mol)."""
        q = self.charge_ref + OFFSET_UNITS["charge"] * self.charge_shift
        return q, self.sigma0 * self.log_sigma.exp(), self.epsilon0 * self.log_eps.exp()

    def _combined(self, i: torch.Tensor, j: torch.Tensor, d: torch.Tensor, coulomb: torch.Tensor | float = 1.0
                  ) -> torch.Tensor:
        """Pair energies with the combined parameters; ``coulomb`` scales the charge products."""
        q, sig, eps = self.parameters_lj()
        return pair_energy(d, coulomb * q[i] * q[j], 0.5 * (sig[i] + sig[j]), torch.sqrt(eps[i] * eps[j] + 1e-12))

    # --------------------------------------------------------------- forward
    def forward(self, pos: torch.Tensor) -> dict[str, torch.Tensor]:
        f, n = pos.shape[:2]
        flat = pos.reshape(f * n, 3)
        batch = torch.arange(f, device=pos.device).repeat_interleave(n)
        ei = radius_pairs(flat, self.cutoff, batch)
        d = (flat[ei[0]] - flat[ei[1]]).norm(dim=-1)
        rbf, env = gaussian_rbf(d, self.cutoff, self.n_rbf), cosine_cutoff(d, self.cutoff)
        h = self._features(f, ei, rbf, env)
        # total: bonded + switched non-bonded (each unordered pair once) + per-atom corrections
        local_i, local_j = ei[0] % n, ei[1] % n
        once = (ei[0] < ei[1]) & ~torch.isin(local_i * n + local_j, self.excluded)
        screen = SCREENING * self.log_screening.exp()
        nb = self._combined(local_i[once], local_j[once], d[once], screen) * _switch(d[once], self.cutoff)
        total = self._bonded(pos) + torch.zeros(f, device=pos.device, dtype=pos.dtype).index_add_(
            0, batch[ei[0][once]], nb)
        total = total + self.atom_out(h).view(f, n).sum(-1)
        edges = (local_i, local_j, batch[ei[0]], rbf, env)
        return {"total": total, "interaction": self._interaction(pos, h.view(f, n, -1), edges)}

    def _interaction(self, pos: torch.Tensor, h: torch.Tensor, edges: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Per-residue interaction energies (F, R): exact-form pairs over all protein × ligand atoms
        plus the learnt correction on the radius graph's protein -> ligand edges.

        ``edges``: per edge (E,) its source and target atoms within their frame, its frame, its
        Gaussians (E, n_rbf) and its envelope (E,), as ``forward`` computed them.
        """
        f = pos.shape[0]
        out = pos.new_zeros(f, self.n_residues)
        prot, lig = self.protein_atoms, self.ligand_atoms
        if not len(lig) or not len(prot):
            return out
        pi, lj = prot[:, None].expand(-1, len(lig)), lig[None, :].expand(len(prot), -1)
        dist = (pos[:, pi] - pos[:, lj]).norm(dim=-1)  # (F, P, L)
        e = self._combined(pi, lj, dist).sum(-1)  # (F, P)
        out = out.index_add(1, self.protein_residue[prot], e)
        src, dst, frame, rbf, env = edges
        cross = (self.protein_residue[src] >= 0) & self.is_ligand[dst]
        if bool(cross.any()):
            s, t, b = src[cross], dst[cross], frame[cross]
            hs, ht = h[b, s], h[b, t]
            corr = (self.pair_a(hs) * self.pair_b(ht) * self.pair_rbf(rbf[cross])).sum(-1) * env[cross]
            flat = out.view(-1).index_add(0, b * self.n_residues + self.protein_residue[s], corr)
            out = flat.view(f, self.n_residues)
        return out + self.residue_offset


def _switch(d: torch.Tensor, cutoff: float, start: float = 0.8) -> torch.Tensor:
    """1 below ``start·cutoff``, smoothly (C²) to 0 at ``cutoff``; (E,) -> (E,)."""
    x = ((d / cutoff - start) / (1.0 - start)).clamp(0.0, 1.0)
    return 1.0 - x ** 3 * (10.0 - 15.0 * x + 6.0 * x * x)


def _neighbours(bonds: torch.Tensor, n: int) -> list[set[int]]:
    """(2, B) bonds of n atoms -> each atom's bonded neighbours."""
    nbr: list[set[int]] = [set() for _ in range(n)]
    for a, b in bonds.t().tolist():
        nbr[a].add(b)
        nbr[b].add(a)
    return nbr


def _angles(bonds: torch.Tensor, n: int) -> torch.Tensor:
    """(2, B) bonds -> (3, M) angles i-j-k (i < k), each once."""
    nbr = _neighbours(bonds, n)
    out = [(i, j, k) for j in range(n) for i in nbr[j] for k in nbr[j] if i < k]
    return torch.tensor(out, dtype=torch.long).reshape(-1, 3).t().contiguous()


def _torsion_ends(bonds: torch.Tensor, n: int) -> torch.Tensor:
    """(2, B) bonds -> (2, M) the end atoms of every path i-j-k-l (1-4 pairs)."""
    nbr = _neighbours(bonds, n)
    out = {(min(i, m), max(i, m)) for j, k in bonds.t().tolist() for i in nbr[j] - {k} for m in nbr[k] - {j}
           if i != m}
    return torch.tensor(sorted(out), dtype=torch.long).reshape(-1, 2).t().contiguous()


def _cos_angle(pos: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Cosines of angles i-j-k: pos (..., A, 3), angles (3, M) -> (..., M)."""
    u = pos[..., angles[0], :] - pos[..., angles[1], :]
    v = pos[..., angles[2], :] - pos[..., angles[1], :]
    return (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1)).clamp(min=1e-6)

