"""The atom encoder beside PyG's ViSNet: the same width, depth, radial basis, cutoff, neighbour cap and atoms.

    python tools/encoder_benchmark.py [--config configs/demo.yaml] [KEY=VALUE ...] [--frames 1 4] [--repeats 5]
        [--threads 1]

Both encode the key frames of the config's system (its first training frame, repeated ``--frames`` times as one
batch): this project's :class:`~hemeplm.models.encoder.AtomEncoder` (as :class:`~hemeplm.models.surrogate.HemePLM`
builds it from the config's ``encoder`` section) and ``torch_geometric.nn.models.visnet.ViSNetBlock`` (ViSNet's
representation, with ``torch_cluster``'s radius graph), randomly initialised (time does not depend on the weights).
Each is timed over ``--repeats`` passes after one warm-up, as sampling runs it (forward, no gradient: once per
window) and as training runs it (forward and backward of the sum of its outputs); the median is reported. Graph
building is inside both timings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from hemeplm.config import Config, load_config
from hemeplm.data.dataset import featurize
from hemeplm.models.surrogate import HemePLM, system_static

ROOT = Path(__file__).resolve().parents[1]


def pyg_visnet(hidden: int, layers: int, lmax: int, num_rbf: int, cutoff: float, max_neighbors: int):
    """PyG's ViSNet representation block at these settings, on ``torch_cluster``'s radius graph."""
    import torch_cluster
    from torch_geometric.nn.models import visnet

    visnet.radius_graph = torch_cluster.radius_graph  # PyG's own needs pyg-lib
    return visnet.ViSNetBlock(lmax=lmax, num_heads=8 if hidden % 8 == 0 else 4, num_layers=layers,
                              hidden_channels=hidden, num_rbf=num_rbf, cutoff=cutoff, max_num_neighbors=max_neighbors)


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def compare(cfg: Config, frames: int, repeats: int) -> dict:
    """Seconds per pass of both encoders on ``frames`` key frames of the system of ``cfg``."""
    feats = featurize(cfg.data)
    model = HemePLM(cfg, system_static(feats, cfg.denoiser.pocket_radius, cfg.denoiser.domain_size))
    e = cfg.encoder
    ours = model.encoder
    theirs = pyg_visnet(e.hidden, e.layers, e.lmax, e.num_rbf, e.cutoff, e.max_neighbors)
    pos = torch.as_tensor(feats["segments"][0][:1]).repeat(frames, 1, 1)
    a = pos.shape[1]
    z = torch.as_tensor(feats["element"]).long().repeat(frames) + 1
    batch = torch.arange(frames).repeat_interleave(a)
    static = model.static

    def run_ours(grad: bool):
        p = pos.clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            h, vec = ours(p, static)
            if grad:
                (h.sum() + vec.sum()).backward()

    def run_theirs(grad: bool):
        p = pos.reshape(-1, 3).clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            h, vec = theirs(z, p, batch)
            if grad:
                (h.sum() + vec.sum()).backward()

    row = {"atoms": a, "frames": frames, "hidden": e.hidden, "layers": e.layers, "lmax": e.lmax,
           "num_rbf": e.num_rbf, "cutoff": e.cutoff, "max_neighbors": e.max_neighbors,
           "parameters": {"ours": sum(p.numel() for p in ours.parameters()),
                          "pyg_visnet": sum(p.numel() for p in theirs.parameters())}}
    for name, grad in (("inference", False), ("training", True)):
        mine, other = timed(lambda: run_ours(grad), repeats), timed(lambda: run_theirs(grad), repeats)
        row[name] = {"ours_s": mine, "pyg_visnet_s": other, "speedup": other / mine}
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    p.add_argument("--frames", type=int, nargs="+", default=[1, 4])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    p.add_argument("overrides", nargs="*", help="config key=value (encoder.hidden=64 ...)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    rows = [compare(cfg, f, args.repeats) for f in args.frames]
    print("| atoms × frames | width, depth | pass | ours (ms) | PyG ViSNet (ms) | speed-up |")
    print("|---|---|---|---:|---:|---:|")
    for r in rows:
        for name in ("inference", "training"):
            t = r[name]
            print(f"| {r['atoms']} × {r['frames']} | {r['hidden']}, {r['layers']} | {name} | {t['ours_s'] * 1e3:.1f} | "
                  f"{t['pyg_visnet_s'] * 1e3:.1f} | {t['speedup']:.2f}× |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
