"""Molecular energy models on the GFN2-xTB molecule data sets, and AI2BMD-style fragmentation of chignolin.

    python tools/qm_benchmark.py [--molecules ethanol propane ...] [--seconds 240] [--max-steps 3000]
    python tools/qm_benchmark.py --fragmentation 20 [--molecules none] [--fragment-model runs/NAME/ckpt.pt]

For each molecule (its data set under data/qm/, made when missing) three predictors are scored on the
held-out test block (the last 10 % of each sampling run, in time): predicting the training mean
(energy) and mean force, this project's molecular energy model (:mod:`hemeplm.models.molecular`, the
settings of configs/qm_<molecule>.yaml) and PyG's ViSNet (``torch_geometric.nn.models.ViSNet``, the same
width, depth, lmax, radial basis and cutoff), both trained by the same loop
(:func:`hemeplm.train.molecular.fit`: same training frames, batches, loss, optimiser, EMA) for the same
wall-clock budget (``--seconds``) or ``--max-steps``, whichever ends first. One table is printed:
energy MAE (kcal/mol), energy R² (against the test block's own mean), force MAE (kcal/mol/Å) and force R²,
with each model's training time per step and inference time per frame (energy and forces of the test block,
64 frames per batch; the fastest of three passes).

``--fragmentation N`` takes N frames spread over chignolin's data set and compares AI2BMD-style
fragmentation (:mod:`hemeplm.forcefield.fragmentation`: ACE-X-NME units minus ACE-NME overlaps, without and
with the Coulomb + LJ between atoms that share no fragment, the Coulomb with Amber14's charges or with GFN2-xTB's
charges of the fragments averaged over 10 of the N frames) with the direct GFN2-xTB labels:
energy MAE after removing the mean offset, R², force MAE and seconds per frame. With ``--fragment-model`` the
same fragments are also predicted by a molecular energy model trained on chignolin's fragment set
(configs/qm_chignolin-fragments.yaml: fragments of an MD run of its own, so these frames are held out), as
AI2BMD predicts a protein.

Timings depend on the machine: the script prints the thread count and CPU count beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hemeplm.config import load_config  # noqa: E402
from hemeplm.data.molecules import MOLECULES, SMALL, read_dataset  # noqa: E402
from hemeplm.train.molecular import (build_model, evaluate_split, fit, load_molecule_data, mean_baseline,  # noqa: E402
                                     score, thin)


#: passes over the test block whose fastest gives the inference time (the first pays for warming up)
INFERENCE_REPEATS = 3


class PyGViSNet(torch.nn.Module):
    """PyG's ViSNet behind the interface :func:`~hemeplm.train.molecular.fit` trains: ``energy_and_forces`` and
    ``fit_statistics`` (one molecule's training mean energy and force RMS as its ``mean`` and ``std``)."""

    def __init__(self, hidden: int, layers: int, lmax: int, num_rbf: int, cutoff: float, max_neighbors: int = 256):
        super().__init__()
        import torch_cluster
        from torch_geometric.nn.models import visnet

        # PyG's radius_graph needs pyg-lib here; torch_cluster's takes the same arguments
        visnet.radius_graph = torch_cluster.radius_graph
        self.net = visnet.ViSNet(lmax=lmax, num_heads=8, num_layers=layers, hidden_channels=hidden, num_rbf=num_rbf,
                                 cutoff=cutoff, max_num_neighbors=max_neighbors, derivative=False)

    @torch.no_grad()
    def fit_statistics(self, molecules) -> None:
        ((_, energy, forces),) = molecules
        self.net.mean.fill_(energy.double().mean().item())
        self.net.std.fill_(forces.double().pow(2).mean().sqrt().item())

    def energy_and_forces(self, numbers, pos, create_graph: bool = False):
        b, a, _ = pos.shape
        with torch.enable_grad():
            pos = pos.detach().requires_grad_(True)
            z = numbers.long().repeat(b)
            batch = torch.arange(b, device=pos.device).repeat_interleave(a)
            energy, _ = self.net(z, pos.reshape(b * a, 3), batch)
            energy = energy.view(b)
            (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=create_graph)
        return energy, -grad


def benchmark(molecules: list[str], seconds: float, max_steps: int | None) -> list[dict]:
    rows = []
    for name in molecules:
        cfg = load_config(ROOT / "configs" / f"qm_{name}.yaml")
        cfg.qm.dataset = [str(ROOT / "data" / "qm" / name)]
        if max_steps is not None:
            cfg.max_steps = max_steps
        (data,) = load_molecule_data(cfg)
        train = thin(data.subset("train"), cfg.qm.train_frames)
        test = data.subset("test")
        base = mean_baseline(train, test)
        common = {"molecule": name, "atoms": len(data.numbers), "train_frames": len(train["energy"]),
                  "test_frames": len(test["energy"])}
        rows.append(common | {"model": "training mean", "steps": 0, "seconds": 0.0, "ms_per_step": 0.0,
                              "ms_per_frame": 0.0} | base)
        e = cfg.encoder
        for label, make in (("HemePLM molecular", lambda: build_model(cfg)),
                            ("PyG ViSNet", lambda: PyGViSNet(e.hidden, e.layers, e.lmax, e.num_rbf, e.cutoff))):
            torch.manual_seed(cfg.seed)  # each model's initial weights from the config's seed
            model = make()
            params = sum(p.numel() for p in model.parameters())
            result = fit(model, [(data.numbers, train)], cfg, max_seconds=seconds)
            seconds_per_pass = []
            for _ in range(INFERENCE_REPEATS):
                t = time.perf_counter()
                found = evaluate_split(result["ema"], data, "test")
                seconds_per_pass.append(time.perf_counter() - t)
            infer = min(seconds_per_pass) / len(test["energy"])
            rows.append(common | {"model": label, "params": params, "steps": result["step"],
                                  "seconds": round(result["seconds"], 1),
                                  "ms_per_step": round(1000 * result["seconds"] / max(1, result["step"]), 1),
                                  "ms_per_frame": round(1000 * infer, 2)}
                        | {k: found[k] for k in ("energy_mae", "energy_r2", "force_mae", "force_r2")})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def fragmentation(n_frames: int, model_ckpt: str | None = None) -> list[dict]:
    from hemeplm.forcefield.fragmentation import Fragmented
    from hemeplm.train.molecular import load_molecular

    data = read_dataset(ROOT / "data" / "qm" / "chignolin")
    idx = np.linspace(0, len(data.energy) - 1, n_frames).round().astype(int)
    true_e, true_f = data.energy[idx], data.forces[idx]
    cost = data.meta["cost_s"]["labelling"] / max(1, len(data.energy) + len(data.meta["failed_frames"]))
    rows = [{"method": "direct GFN2-xTB (the labels: reference)", "frames": n_frames, "s_per_frame": round(cost, 2),
             "energy_offset": 0.0, "energy_mae_after_offset": 0.0, "energy_r2": 1.0, "force_mae": 0.0,
             "force_r2": 1.0}]
    levels = [("GFN2-xTB", None)] + ([("the model", load_molecular(model_ckpt)[0])] if model_ckpt else [])
    x = data.positions[idx]
    t = time.perf_counter()
    gfn2_long = Fragmented(data.topology, data.numbers, "gfn2", reference=x)  # its charges: from these frames
    per_charges = (time.perf_counter() - t) / n_frames
    for level, model in levels:
        frag = Fragmented(data.topology, data.numbers, "mm", model)  # the fragments run once for every row
        t = time.perf_counter()
        e_full, f_full = frag(x)
        per_full = (time.perf_counter() - t) / n_frames
        t = time.perf_counter()
        e_long, f_long = frag.long_range(x)
        per_long = (time.perf_counter() - t) / n_frames
        e_gfn2, f_gfn2 = gfn2_long.long_range(x)
        for label, e, f, per in ((f"fragments by {level}", e_full - e_long, f_full - f_long, per_full - per_long),
                                 (f"fragments by {level} + Amber14 long-range", e_full, f_full, per_full),
                                 (f"fragments by {level} + long-range with GFN2-xTB charges",
                                  e_full - e_long + e_gfn2, f_full - f_long + f_gfn2, per_full + per_charges)):
            offset = float((e - true_e).mean())
            s = score(e - offset, f, true_e, true_f)
            rows.append({"method": label, "frames": n_frames, "s_per_frame": round(per, 3), "energy_offset": offset,
                         "energy_mae_after_offset": s["energy_mae"], "energy_r2": s["energy_r2"],
                         "force_mae": s["force_mae"], "force_r2": s["force_r2"]})
            print(json.dumps(rows[-1]), flush=True)
    rows.append({"method": "(force scale: mean |F| of the labels)", "frames": n_frames,
                 "force_mae": float(np.abs(true_f).mean())})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--molecules", nargs="+", default=list(SMALL),
                   help=f"of {', '.join(MOLECULES)}; 'none' for no model benchmark")
    p.add_argument("--seconds", type=float, default=240.0, help="training wall-clock budget per model")
    p.add_argument("--max-steps", type=int, default=None, help="step budget (unset: the config's max_steps)")
    p.add_argument("--fragmentation", type=int, default=0, metavar="N",
                   help="also compare fragmentation with direct GFN2-xTB on N chignolin frames")
    p.add_argument("--fragment-model", default=None, metavar="CKPT",
                   help="with --fragmentation: also the fragments by this molecular energy model, trained on "
                        "chignolin's fragments (configs/qm_chignolin-fragments.yaml)")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    machine = f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}"
    out = {"machine": machine}
    molecules = [] if args.molecules == ["none"] else args.molecules
    if molecules:
        rows = benchmark(molecules, args.seconds, args.max_steps)
        out["models"] = rows
        steps = args.max_steps or "the config's max_steps"
        print(f"\nHeld-out test block (last 10% of each run); budget per model: {args.seconds:g} s or {steps} steps, "
              f"whichever ends first ({machine})")
        print(f"{'molecule':<18} {'model':<18} {'steps':>6} {'train s':>8} {'ms/step':>8} {'ms/frame':>9} "
              f"{'E MAE':>8} {'E R2':>7} {'F MAE':>7} {'F R2':>7}")
        for r in rows:
            print(f"{r['molecule']:<18} {r['model']:<18} {r['steps']:>6} {r['seconds']:>8.0f} "
                  f"{r['ms_per_step']:>8.1f} {r['ms_per_frame']:>9.2f} "
                  f"{r['energy_mae']:>8.3f} {r['energy_r2']:>7.3f} {r['force_mae']:>7.3f} {r['force_r2']:>7.3f}")
        print("(kcal/mol and kcal/mol/Å)")
    if args.fragmentation:
        rows = fragmentation(args.fragmentation, args.fragment_model)
        out["fragmentation"] = rows
        print(f"\nChignolin: fragmentation vs direct GFN2-xTB on {args.fragmentation} frames ({machine})")
        print("(energies compared after removing each method's mean offset from the direct energies)")
        print(f"{'method':<60} {'s/frame':>8} {'offset':>9} {'E MAE':>8} {'E R2':>7} {'F MAE':>7} {'F R2':>7}")
        for r in rows[:-1]:
            print(f"{r['method']:<60} {r['s_per_frame']:>8.3f} {r['energy_offset']:>9.1f} "
                  f"{r['energy_mae_after_offset']:>8.2f} {r['energy_r2']:>7.3f} {r['force_mae']:>7.2f} "
                  f"{r['force_r2']:>7.3f}")
        print(f"(kcal/mol and kcal/mol/Å; mean |F| of the direct labels: {rows[-1]['force_mae']:.2f} kcal/mol/Å)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
