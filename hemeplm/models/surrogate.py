"""HemePLM: encoder + video denoiser + energy head, composed over one system.

The model owns the system's static description (token layout, atom features,
pocket, domains, optional protein-language-model embeddings) and the
normalisation statistics as buffers, so that a checkpoint alone rebuilds it.

Shapes: B windows, T frames, A atoms, N tokens, W atom slots per token,
D values per token (a rigid-body transform and torsions, :mod:`hemeplm.data.internal`),
C encoder width, R residues (protein + ligand).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hemeplm.config import Config
from hemeplm.data import internal as ic
from hemeplm.data import tokens as tok
from hemeplm.data.ligand import ELEMENTS, N_LIGAND_FEATURES
from hemeplm.data.residues import N_RES_TYPES
from hemeplm.geometry.rigid import mean_structure, superpose_onto
from hemeplm.geometry.structure import peptide_quads
from hemeplm.models.denoiser import Conditioning, VideoDenoiser
from hemeplm.device import in_precision
from hemeplm.diffusion import GaussianDiffusion
from hemeplm.models.encoder import AtomEncoder
from hemeplm.models.energy import EnergyModel
from hemeplm.models.refine import JunctionRefiner, contacts

#: rotation-vector, translation and sin/cos values: the smallest standard deviation normalisation divides by
#: (so that a value that hardly moves in training is not blown up into a large normalised value)
VALUE_STD_FLOOR = (0.02, 0.05, 0.02)
#: equivariant vector channels per atom whose components along the token's axes enter its embedding
VECTOR_CHANNELS = 4

#: per-atom arrays of the featurised system the model keeps
STATIC_KEYS = ("element", "atom_type", "ligand_features", "charge", "is_ligand", "polar", "residue", "bonds",
               "protein_residue")


def system_static(feats: dict, pocket_radius: float, domain_size: int) -> dict:
    """The parts of a featurised system the model needs, as numpy arrays and plain values.

    Adds ``reference`` (A, 3), the first frame, ``pocket`` (P,) protein tokens within ``pocket_radius`` Å of the ligand in the
    first frame, ``domain`` (N,) contiguous residue chunks of ``domain_size``, the
    atom/residue names used to check that a topology matches the checkpoint, and the
    training data's ``timestep_ps`` (time between saved frames).
    """
    layout = feats["layout"]
    pocket = pocket_tokens(layout, feats["segments"][0][0], np.nonzero(feats["is_ligand"])[0], pocket_radius)
    domain = layout["residue"] // max(1, domain_size)
    out = {k: np.asarray(feats[k]) for k in STATIC_KEYS}
    out.update(layout={k: np.asarray(v) for k, v in layout.items()},
               internal={k: np.asarray(v) for k, v in feats["internal"].items()}, pocket=pocket, domain=domain,
               plm=feats.get("plm"), n_atoms=int(feats["n_atoms"]), atom_names=list(feats["atom_names"]),
               residue_names=list(feats["residue_names"]), topology_pdb=feats["topology_pdb"],
               timestep_ps=float(feats["timestep_ps"]), reference=np.asarray(feats["segments"][0][0]),
               interaction_residues=list(feats["interaction_residues"]))
    return out


def pocket_tokens(layout: dict, first: np.ndarray, ligand: np.ndarray, radius: float) -> np.ndarray:
    """(P,) protein tokens with an atom within ``radius`` Å of a ligand atom in ``first`` (A, 3).

    A k-d tree over the ligand atoms keeps it linear (water kept as ligand can be 10^4 atoms).
    """
    from scipy.spatial import cKDTree

    if not len(ligand):
        return np.zeros(0, np.int64)
    idx = np.asarray(layout["atom_index"])
    d = cKDTree(first[ligand]).query(first[idx.clip(min=0)].reshape(-1, 3), distance_upper_bound=radius)[0]
    d = np.where(idx >= 0, d.reshape(idx.shape), np.inf).min(-1)
    return np.nonzero((d <= radius) & (np.asarray(layout["kind"]) != tok.KIND_LIGAND))[0]



class Buffers(nn.Module):
    """Named tensors of the system that move with the model (``.to(device)``) but are not saved (they are
    rebuilt from the checkpoint's ``static``): read as attributes (``model.tokens.kind``) or as a mapping
    (``layout["kind"]``, what the functions of :mod:`hemeplm.data.internal` take)."""

    def __init__(self, tensors: dict):
        super().__init__()
        for k, v in tensors.items():
            self.register_buffer(k, torch.as_tensor(v), persistent=False)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._buffers[key]

    def __contains__(self, key: str) -> bool:
        return key in self._buffers

    def keys(self):
        return self._buffers.keys()

    def items(self):
        return self._buffers.items()


class HemePLM(nn.Module):
    """Generative surrogate of one system's MD, with energies and forces.

    Args:
        cfg: the run's Config (encoder, denoiser, energy sections are read).
        static: :func:`system_static` output.
    """

    def __init__(self, cfg: Config, static: dict):
        super().__init__()
        self.static_info = {k: static[k] for k in ("n_atoms", "atom_names", "residue_names", "topology_pdb",
                                                   "timestep_ps", "interaction_residues")}
        self.atoms = Buffers({k: static[k] for k in STATIC_KEYS})
        self.tokens = Buffers(static["layout"])
        self.internal = Buffers(static["internal"])
        # (Q, 4) CA(i), C(i), N(i+1), CA(i+1) of each peptide bond: training's and the projection's peptide terms
        self.register_buffer("peptide", peptide_quads(self.tokens.torsion_atoms[:, 2], self.internal.pair_index,
                                                      self.internal.pair_length), persistent=False)
        self.register_buffer("pocket", torch.as_tensor(static["pocket"], dtype=torch.long), persistent=False)
        self.register_buffer("domain", torch.as_tensor(static["domain"], dtype=torch.long), persistent=False)
        plm = static.get("plm")
        self.register_buffer("plm", None if plm is None else torch.as_tensor(plm, dtype=torch.float32),
                             persistent=False)
        n_tok, width = static["layout"]["atom_index"].shape
        self.n_atoms, self.width = static["n_atoms"], width
        # per-token normalisation statistics (fitted on the training windows, saved in the state dict)
        self.register_buffer("norm_mean", torch.zeros(n_tok, ic.N_VALUES))
        self.register_buffer("norm_std", torch.ones(n_tok, ic.N_VALUES))
        self.register_buffer("value_limit", torch.tensor(float("inf")))
        # energy label statistics (training frames): the energy model predicts around these
        n_res = len(static["interaction_residues"])
        self.register_buffer("energy_mean", torch.zeros(()))
        self.register_buffer("energy_std", torch.ones(()))
        self.register_buffer("force_rms", torch.ones(()))
        self.register_buffer("interaction_mean", torch.zeros(n_res))
        self.register_buffer("interaction_scale", torch.ones(()))
        self.register_buffer("has_energy_stats", torch.zeros((), dtype=torch.bool))
        self.register_buffer("has_interaction_stats", torch.zeros((), dtype=torch.bool))

        e, d = cfg.encoder, cfg.denoiser
        self.spatial, self.local_neighbors = d.spatial, d.local_neighbors
        n_atom_types, n_elements = (N_RES_TYPES + 1) * width + 1, len(ELEMENTS) + 1
        self.encoder = AtomEncoder(n_elements, n_atom_types, N_LIGAND_FEATURES,
                                   hidden=e.hidden, layers=e.layers, lmax=e.lmax, num_rbf=e.num_rbf,
                                   cutoff=e.cutoff, max_neighbors=e.max_neighbors)
        slot_features = e.hidden + 3 + 3 * VECTOR_CHANNELS
        self.vector_mix = nn.Linear(e.hidden, VECTOR_CHANNELS, bias=False)
        self.slots_in = nn.Sequential(nn.Linear(width * slot_features, e.hidden), nn.SiLU(),
                                      nn.Linear(e.hidden, e.hidden))
        self.torsions_in = nn.Linear(2 * ic.N_TORSIONS, e.hidden)
        self.res_type = nn.Embedding(N_RES_TYPES, e.hidden)
        self.kind = nn.Embedding(3, e.hidden)
        self.plm_proj = None if plm is None else nn.Linear(plm.shape[1], e.hidden)
        # (N, 3) token positions of the training windows' mean structure (fitted with the normalisation)
        self.register_buffer("ensemble_mean", torch.zeros(n_tok, 3) if d.ensemble_offset else None)
        self.offset_in = nn.Linear(4, e.hidden) if d.ensemble_offset else None
        if self.offset_in is not None:  # starts as the model without it
            nn.init.zeros_(self.offset_in.weight)
            nn.init.zeros_(self.offset_in.bias)
        self.denoiser = VideoDenoiser(ic.N_VALUES, e.hidden, dim=d.dim, depth=d.depth, heads=d.heads,
                                      mlp_ratio=d.mlp_ratio, max_tau=d.max_tau, cross_window=d.cross_window,
                                      max_tokens=d.max_tokens, fragment_halo=d.fragment_halo,
                                      lag_conditioned=bool(cfg.data.lags))
        # the lags (frames of the MD) it was trained at, and the one it samples at unless told otherwise
        self.lags, self.default_lag = cfg.data.training_lags, cfg.data.lag
        # the denoiser's last layers refine its clean estimate from the estimate's inter-token geometry;
        # they work on x0, so the model keeps the noise schedule that converts the output to it and back
        self.refiner = JunctionRefiner(d.dim, d.refine_steps) if d.refine_steps else None
        self.schedule = GaussianDiffusion.from_config(cfg.diffusion)
        tok_of, slot_of = self.tokens.atom_token, self.tokens.atom_slot
        pairs, quads = self.internal.pair_index.long(), self.peptide.long().T
        for name, val in {"pair_token": tok_of[pairs], "pair_slot": slot_of[pairs], "quad_token": tok_of[quads],
                          "quad_slot": slot_of[quads],
                          "slot_radius": torch.where(self.tokens.atom_index >= 0,
                                                     self.internal.radius[self.tokens.atom_index.clamp(min=0)], 0.0)
                          }.items():
            self.register_buffer(name, val, persistent=False)
        en = cfg.energy
        self.energy_model = EnergyModel(static, n_res, n_atom_types, n_elements, hidden=en.hidden, layers=en.layers,
                                        n_rbf=en.n_rbf, cutoff=en.cutoff) if en.enabled else None

    # ------------------------------------------------------------------ system views
    def topology(self):
        """mdtraj Topology of the system's kept atoms (from the PDB text kept in the checkpoint)."""
        if not hasattr(self, "_topology"):
            import tempfile
            from pathlib import Path

            import mdtraj

            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "system.pdb"
                path.write_text(self.static_info["topology_pdb"])
                self._topology = mdtraj.load_pdb(str(path)).topology
        return self._topology

    @property
    def layout(self) -> Buffers:
        """The token layout (:class:`~hemeplm.data.tokens.TokenLayout` fields), as :attr:`tokens`."""
        return self.tokens

    @property
    def static(self) -> Buffers:
        """Per-atom arrays of the system (:data:`STATIC_KEYS`), as :attr:`atoms`."""
        return self.atoms

    @property
    def token_is_ligand(self) -> torch.Tensor:
        """(N,) bool."""
        return self.tokens.kind == tok.KIND_LIGAND

    @property
    def value_mask(self) -> torch.Tensor:
        """(N, D) float, 1 where a value means something (the rigid body; the sin/cos of present torsions)."""
        present = (self.internal.torsion_slots[..., 0] >= 0).repeat_interleave(2, dim=-1)
        return torch.cat([torch.ones_like(present[:, :1]).expand(-1, 6), present], -1).float()

    # ------------------------------------------------------------------ values <-> coordinates
    def values(self, coords: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """(B, T, A, 3), key (B, A, 3) -> normalised internal values (B, T, N, D)."""
        v = ic.encode(coords, key, self.layout, self.internal)
        return (v - self.norm_mean) / self.norm_std * self.value_mask

    def coordinates(self, values: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """Normalised values (B, T, N, D), key (B, A, 3) -> coordinates (B, T, A, 3)."""
        v = values * self.norm_std + self.norm_mean
        return ic.decode(v, key, self.layout, self.internal, self.n_atoms)

    @torch.no_grad()
    def fit_normalisation(self, windows) -> None:
        """Fit per-token value statistics on training windows (dataset items).

        Each token's values get their own mean and standard deviation over the windows' frames,
        so the prior (what sampling gives with nothing learnt) already carries each residue's
        mobility; the standard deviation is floored by :data:`VALUE_STD_FLOOR`.
        """
        vals = []
        for item in windows:
            c = item["coords"].to(self.norm_mean)
            vals.append(ic.encode(c, c[0], self.layout, self.internal))
        v = torch.cat(vals).flatten(0, -3)  # (M·T, N, D)
        keep = self.value_mask
        floor = torch.tensor([VALUE_STD_FLOOR[0]] * 3 + [VALUE_STD_FLOOR[1]] * 3
                             + [VALUE_STD_FLOOR[2]] * 2 * ic.N_TORSIONS).to(v)
        self.norm_mean.copy_(v.mean(0) * keep)
        self.norm_std.copy_(torch.where(keep > 0, v.std(0).clamp(min=floor), torch.ones_like(keep)))
        z = (v - self.norm_mean) / self.norm_std * keep
        self.value_limit.fill_(float(z.abs().max()) * 1.5)
        if self.ensemble_mean is not None:
            first = torch.stack([item["coords"][0] for item in windows]).to(self.norm_mean)
            self.ensemble_mean.copy_(mean_structure(self.token_positions(first)[0], self.fit_weights))

    @property
    def fit_weights(self) -> torch.Tensor:
        """(N,) weights of the tokens a structure is superposed by: the protein's (all tokens without one)."""
        protein = (~self.token_is_ligand).float()
        return protein if bool(protein.any()) else torch.ones_like(protein)

    def ensemble_offset(self, centres: torch.Tensor, known: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
        """Where each token sits in the training mean structure, superposed on the key frame by its known protein
        tokens, relative to where it is: (B, N, 3) token positions, (B, N) known, (B, N, 3, 3) token axes ->
        (B, N, 4) features, the offset along the token's axes (per 2 Å) and its length (unknown tokens, such as
        an inpainted ligand's, are at their anchor's place, so theirs says where the ligand usually is)."""
        with torch.autocast(centres.device.type, enabled=False):  # the fit in float64 under any autocast
            centres = centres.double()
            offset = superpose_onto(self.ensemble_mean.double().expand_as(centres), centres,
                                    self.fit_weights * known) - centres
            local = torch.einsum("bnji,bnj->bni", rot.double(), offset) / 2.0
            return torch.cat([local, local.norm(dim=-1, keepdim=True)], -1).float()

    @torch.no_grad()
    def fit_energy(self, frames, calibrate: int = 16) -> None:
        """Energy label statistics from labelled training frames (:class:`~hemeplm.data.dataset.LabelledFrames`
        items), and the energy model's offsets calibrated on the first ``calibrate`` of them so that
        it starts at the training means (the per-residue means are what it must beat)."""
        if not frames or self.energy_model is None:
            return
        e = torch.stack([f["energy"] for f in frames]).double()
        forces = torch.stack([f["forces"] for f in frames]).double()
        self.energy_mean.fill_(float(e.mean()))
        self.energy_std.fill_(float(e.std().clamp(min=1e-3)) if len(e) > 1 else 1.0)
        self.force_rms.fill_(float(forces.pow(2).mean().sqrt().clamp(min=1e-3)))
        self.has_energy_stats.fill_(True)
        labelled = [f for f in frames if bool(f["has_interaction"])]
        pos = torch.stack([f["coords"] for f in frames[:calibrate]]).to(self.energy_mean.device)
        pred = self.energy_model(pos)
        self.energy_model.atom_out[-1].bias.fill_(-float(pred["total"].mean()) / self.n_atoms)
        if labelled and self.interaction_mean.numel():
            inter = torch.stack([f["interaction"] for f in labelled]).double()
            self.interaction_mean.copy_(inter.mean(0))
            var = inter.var(0) if len(inter) > 1 else torch.ones_like(inter[0])
            self.interaction_scale.fill_(float(var.mean().sqrt().clamp(min=0.05)))
            self.energy_model.residue_offset.copy_(self.interaction_mean - pred["interaction"].mean(0)
                                                   + self.energy_model.residue_offset)
            self.has_interaction_stats.fill_(True)

    # ------------------------------------------------------------------ conditioning
    def condition(self, key: torch.Tensor, node_mask: torch.Tensor | None = None,
                  lag: torch.Tensor | int | None = None) -> tuple[Conditioning, torch.Tensor]:
        """Encode key frames.

        A token's embedding reads every one of its atoms (not their mean): per slot, the encoder's
        invariant features, the slot's body coordinates and the encoder's vectors resolved along the
        token's anchor axes (invariant too), plus the sin/cos of its torsions, its residue type
        and kind. The pair geometry for attention (positions, anchor axes, sequence index) goes
        into the :class:`Conditioning` as well.

        Args:
            key: (B, A, 3) Å.
            node_mask: (B, A) bool, atoms whose key positions are known (None = all).
            lag: (B,) or one lag, in frames of the training MD, of the windows (None: ``data.lag``); read by a
                model trained at several lags (``data.lags``) only.
        Returns:
            :class:`Conditioning` and the atom features h (B, A, C).
        """
        from e3nn import o3

        h, vec = self.encoder(key, self.static, node_mask)
        rot, origins = ic.anchors(key, self.layout)  # (B, N, 3, 3), columns = axes; (B, N, 3)
        body = ic.body_coordinates(key, self.layout, self.internal)  # (B, N, W, 3)
        idx, present = self.tokens.atom_index.clamp(min=0), (self.tokens.atom_index >= 0)[..., None]
        axes = o3.spherical_harmonics(1, rot.transpose(-1, -2), normalize=False, normalization="component")
        mixed = self.vector_mix(vec[:, :, :3])[:, idx]  # l = 1 vectors, (B, N, W, 3, V)
        along = torch.einsum("bnks,bnwsv->bnwkv", axes, mixed).flatten(-2)
        slots = torch.cat([h[:, idx], body / 5.0, along], -1) * present.to(h.dtype)
        ang = ic.torsion_angles(body, self.internal)
        tors = torch.stack([ang.sin(), ang.cos()], -1).flatten(-2) * self.value_mask[:, 6:]
        tokens = (self.slots_in(slots.flatten(-2)) + self.torsions_in(tors) + self.res_type(self.tokens.res_type)
                  + self.kind(self.tokens.kind))
        if self.plm_proj is not None:
            is_res = self.tokens.kind != tok.KIND_LIGAND
            tokens = tokens + self.plm_proj(self.plm)[self.tokens.residue] * is_res[:, None]
        centres, known = self.token_positions(key, node_mask)
        if self.offset_in is not None:
            tokens = tokens + self.offset_in(self.ensemble_offset(centres, known, rot))
        neighbors = self._token_neighbors(centres, known, node_mask is not None) if self.spatial == "local" else None
        seq = torch.where(self.token_is_ligand, -1, self.tokens.residue)
        cond = Conditioning(tokens=tokens, neighbors=neighbors, domain=self.domain,
                            ligand=torch.nonzero(self.token_is_ligand).flatten(), pocket=self.pocket,
                            centres=centres, frames=rot, seq=seq, known=known, origins=origins, body=body,
                            index=torch.arange(seq.numel(), device=seq.device),
                            contacts=self.contacts(key, node_mask), lag=self.lag_ps(lag, key))
        return cond, h

    def lag_ps(self, lag: torch.Tensor | int | None, key: torch.Tensor) -> torch.Tensor | None:
        """(B,) ps between the frames of windows at ``lag`` (frames of the training MD; None: ``data.lag``), for
        a model trained at several lags; None for a model of one lag."""
        if self.denoiser.lag is None:
            return None
        lag = torch.as_tensor(self.default_lag if lag is None else lag, device=key.device)
        return (lag * self.static_info["timestep_ps"]).to(key.dtype).expand(key.shape[0])

    def token_positions(self, key: torch.Tensor, node_mask: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, A, 3) -> (B, N, 3) token positions and (B, N) bool, whether each is known.

        A residue token sits at its Cα, a ligand group at the centre of its known atoms; a group
        with no known atom (an inpainted ligand) at its anchor residue's Cα, marked unknown.
        """
        origin = key[:, self.tokens.frame_atoms[self.tokens.residue, 1]]
        b, n = origin.shape[:2]
        known = torch.ones(b, n, dtype=torch.bool, device=key.device)
        lig = self.token_is_ligand
        if not bool(lig.any()):
            return origin, known
        idx = self.tokens.atom_index[lig]  # (L, W)
        w = (idx >= 0).expand(b, -1, -1)
        if node_mask is not None:
            w = w & node_mask[:, idx.clamp(min=0)]
        count = w.sum(-1)  # (B, L)
        centre = (key[:, idx.clamp(min=0)] * w[..., None]).sum(-2) / count.clamp(min=1)[..., None]
        pos = origin.clone()
        pos[:, lig] = torch.where((count > 0)[..., None], centre, origin[:, lig])
        known[:, lig] = count > 0
        return pos, known

    def _token_neighbors(self, pos: torch.Tensor, known: torch.Tensor, masked: bool) -> torch.Tensor:
        """(B, N, 3) token positions, (B, N) known -> (B, N, K) nearest tokens in each key frame.

        Only known tokens are placed; an unknown one (an inpainted ligand group) takes the
        neighbours of its anchor residue, so hidden positions do not leak into the attention pattern.
        """
        from torch_cluster import knn

        b, n = known.shape
        k = min(self.local_neighbors, int(known.sum(1).min()))
        placed = torch.nonzero(known.flatten()).flatten()  # flat (sample, token) indices
        flat = pos.reshape(b * n, 3)[placed]
        batch = placed // n
        dst, src = knn(flat, flat, k, batch, batch)
        order = torch.argsort(dst * len(placed) + src)
        table = torch.zeros(b * n, k, dtype=torch.long, device=pos.device)
        table[placed] = (placed[src[order]] % n).view(-1, k)
        table = table.view(b, n, k)
        if not masked:
            return table
        anchor = self.tokens.atom_token[self.tokens.frame_atoms[self.tokens.residue, 1]]  # (N,) token of the anchor residue
        return torch.where(known[..., None], table, table[:, anchor])

    def denoise(self, x_t, t, cond, mask):
        """The denoiser interface ``denoiser(x_t, t, cond, mask)`` (see :mod:`hemeplm.diffusion`): the video
        transformer, then (``denoiser.refine_steps`` > 0) the :class:`~hemeplm.models.refine.JunctionRefiner`
        on the clean estimate its output stands for."""
        if self.refiner is None:
            return self.denoiser(x_t, t, cond, mask)
        out, hidden = self.denoiser(x_t, t, cond, mask, hidden=True)
        given = mask[..., None]
        # given tokens are where x_t holds them (the output there is never trained); the refiner measures
        # the generated ones against them, in float32 whatever autocast the caller runs
        x0 = torch.where(given, x_t, self.schedule.x0_from_output(x_t, t, out)).float()
        index = cond.index
        internal = {"torsion_slots": self.internal.torsion_slots[index],
                    "torsion_moving": self.internal.torsion_moving[index]}
        with torch.autocast(x_t.device.type, enabled=False):
            x0 = self.refiner(x0, hidden.float(), cond, mask, self.norm_mean[index], self.norm_std[index], internal,
                              self.links(cond, x_t.shape[0]), self.slot_radius[index])
        return torch.where(given, out, self.schedule.output_from_x0(x_t, t, x0.to(x_t.dtype)))

    @torch.no_grad()
    def sample_window(self, diffusion: GaussianDiffusion, coords: torch.Tensor, mask: torch.Tensor,
                      generator: torch.Generator | None = None, steps: int = 50, sampler: str = "ddim",
                      progress: bool = False, denoiser_for=None, noise_scale: float = 1.0,
                      restart_settings: dict | None = None, lag: torch.Tensor | int | None = None,
                      precision: str = "float32") -> torch.Tensor:
        """The network's raw sample of windows keyed on their first frame.

        Args:
            coords: (B, T, A, 3) Å, known entries filled (others ignored).
            mask: (B, T, N) bool, True = known.
            denoiser_for: ``f(model, cond, key) -> denoiser`` (e.g. fragments of a large system); None:
                :meth:`denoise`.
            noise_scale: the sampler's temperature (:meth:`~hemeplm.diffusion.GaussianDiffusion.sample`).
            restart_settings: ``restart``, ``restart_steps`` and ``restarts`` of Restart sampling (the same
                method); None: off.
            lag: the windows' lag, as :meth:`condition` takes it.
            precision: the denoiser's (:func:`~hemeplm.device.in_precision`).
        Returns:
            (B, T, N, D) normalised values relative to the key frame ``coords[:, 0]`` (:meth:`coordinates`).
        """
        key = coords[:, 0]
        node_mask = mask[:, 0][:, self.tokens.atom_token]
        cond, _ = self.condition(key, None if bool(node_mask.all()) else node_mask, lag)
        denoise = in_precision(self.denoise if denoiser_for is None else denoiser_for(self, cond, key), precision)
        return diffusion.sample(denoise, self.values(coords, key), cond, mask, steps=steps, sampler=sampler,
                                generator=generator, progress=progress, clip_x0=float(self.value_limit),
                                noise_scale=noise_scale, **(restart_settings or {}))

    def check_schedule(self, diffusion: GaussianDiffusion) -> None:
        """Refuse a diffusion whose noise schedule is not the one the refiner reads x̂₀ through (the config's)."""
        same = (self.refiner is None or (diffusion.parameterisation == self.schedule.parameterisation
                                         and diffusion.timesteps == self.schedule.timesteps
                                         and torch.allclose(diffusion.alphas_cumprod.cpu(),
                                                            self.schedule.alphas_cumprod.cpu())))
        if not same:
            raise ValueError("this model refines its clean estimate through its config's noise schedule "
                             f"({self.schedule.timesteps} steps, {self.schedule.parameterisation}); train and sample "
                             "it with GaussianDiffusion.from_config of that config")

    def contacts(self, key: torch.Tensor, node_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(3, C) the refiner's candidate contacts of key frames (B, A, 3) (:func:`~hemeplm.models.refine.contacts`);
        none without a refiner."""
        if self.refiner is None:
            return torch.zeros(3, 0, dtype=torch.long, device=key.device)
        return contacts(key, node_mask, self.tokens.atom_token, self.internal)

    def links(self, cond: Conditioning, windows: int) -> dict[str, torch.Tensor]:
        """What the refiner measures among ``cond``'s tokens in a batch of ``windows``, as (token, slot) of each
        atom, tokens numbered as in ``cond`` (a fragment keeps what lies wholly inside it): ``pair_token``,
        ``pair_slot`` (2, P) and ``pair_length`` (P,), the inter-token 1-2/1-3 pairs; ``quad_token``, ``quad_slot``
        (4, Q), the peptide bonds; ``contact_window`` (C,), ``contact_token``, ``contact_slot`` (2, C), the
        candidate contacts (a conditioning of one key serving several windows lends its contacts to each)."""
        n = self.tokens.kind.numel()
        pos = torch.full((n,), -1, dtype=torch.long, device=cond.index.device)
        pos[cond.index] = torch.arange(cond.index.numel(), device=cond.index.device)
        contacts = cond.contacts
        if cond.frames.shape[0] == 1 < windows:
            contacts = torch.cat([torch.arange(windows, device=contacts.device).repeat_interleave(contacts.shape[1])[None],
                                  contacts[1:].repeat(1, windows)])
        atoms = contacts[1:]
        out = {"pair_length": self.internal.pair_length.float()}
        for kind, token, slot in (("pair", self.pair_token, self.pair_slot), ("quad", self.quad_token, self.quad_slot),
                                  ("contact", self.tokens.atom_token[atoms], self.tokens.atom_slot[atoms])):
            local = pos[token]
            inside = (local >= 0).all(0)
            out[f"{kind}_token"], out[f"{kind}_slot"] = local[:, inside], slot[:, inside]
            if kind == "pair":
                out["pair_length"] = out["pair_length"][inside]
            if kind == "contact":
                out["contact_window"] = contacts[0, inside]
        return out

    # ------------------------------------------------------------------ energies and forces
    def predict_energy(self, pos: torch.Tensor, create_graph: bool = False) -> dict[str, torch.Tensor]:
        """Energies and forces of frames.

        Args:
            pos: (F, A, 3) Å, the model's atoms.
            create_graph: keep the graph of the forces (training: force loss needs a double backward).
        Returns:
            ``total`` (F,) kcal/mol, ``forces`` (F, A, 3) kcal/mol/Å and ``interaction`` (F, R)
            kcal/mol, the protein–ligand interaction energy of each protein residue.
        """
        if self.energy_model is None:
            raise RuntimeError("this model was trained without the energy model (energy.enabled=false)")
        with torch.enable_grad():
            pos = pos.detach().requires_grad_(True)
            out = self.energy_model(pos)
            forces = -torch.autograd.grad(out["total"].sum(), pos, create_graph=create_graph)[0]
        found = {"total": out["total"] + self.energy_mean, "forces": forces, "interaction": out["interaction"]}
        return found if create_graph else {k: v.detach() for k, v in found.items()}
