"""Denoising diffusion (DDPM) with ε-prediction, conditioning by inpainting.

Knows nothing about molecules. The denoiser is any callable

    denoiser(x_t, t, cond, mask) -> eps_hat  (or v_hat: see ``parameterisation``)

with ``x_t`` (B, ...) the noisy tensor, ``t`` (B,) integer diffusion steps
(one per sample, so one forward pass serves samples at different noise
levels), ``cond`` whatever the denoiser needs, and ``mask`` (B, ...) bool
(leading dims of ``x``) marking entries that are given. Given entries are
held at their clean values in ``x_t`` at every step and excluded from the
loss; the model only generates the rest.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

Denoiser = Callable[[torch.Tensor, torch.Tensor, Any, torch.Tensor], torch.Tensor]
#: what :meth:`GaussianDiffusion.sample` accepts as ``sampler``
SAMPLERS = ("ddim", "ancestral", "dpm2m")


def _expand(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Append singleton dims to ``m`` until it broadcasts against ``x``."""
    return m.reshape(*m.shape, *([1] * (x.ndim - m.ndim)))


def _evenly(start: int, n: int) -> list[int]:
    """``n`` evenly spaced integer steps from ``start`` down to 0 (fewer where rounding repeats one)."""
    return torch.linspace(start, 0, max(1, n)).round().long().unique_consecutive().tolist()


def _randn_like_gen(shape, like: torch.Tensor, generator: torch.Generator | None, integers: int = 0) -> torch.Tensor:
    """Standard normal (or, with ``integers``, uniform integer) draws on the generator's device, moved to ``like``'s."""
    device = generator.device if generator is not None else like.device
    if integers:
        out = torch.randint(0, integers, shape, device=device, generator=generator)
        return out.to(like.device)
    return torch.randn(shape, device=device, dtype=like.dtype, generator=generator).to(like.device)


#: ᾱ of the last step. The plain cosine schedule ends at ᾱ ≈ 2e-9 (β clipped to 0.999), where
#: ε-prediction says almost nothing about x0: the first DDIM step then multiplies the denoiser's
#: ε error by √(ᾱ_next/ᾱ_T), in the hundreds. At 1e-4 (the linear schedule ends at 4e-5) the
#: error stays O(1) and x_T ~ N(0, I) is still the noise distribution to 1%.
ALPHA_BAR_MIN = 1e-4


def cosine_betas(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal cosine schedule, ᾱ lifted affinely to end at :data:`ALPHA_BAR_MIN`."""
    t = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = ALPHA_BAR_MIN + (1 - ALPHA_BAR_MIN) * f / f[0]
    return 1 - alpha_bar[1:] / alpha_bar[:-1]


def linear_betas(timesteps: int) -> torch.Tensor:
    scale = 1000 / timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)


class GaussianDiffusion(nn.Module):
    """DDPM forward process, ε loss, ancestral and DDIM samplers.

    Args:
        timesteps: number of training noise levels.
        schedule: ``"cosine"`` or ``"linear"``.
        parameterisation: ``"eps"``: the denoiser's output is ε_θ. ``"v"``: the output is read as
            v = √ᾱ_t ε − √(1−ᾱ_t) x_0 and ε_θ = √(1−ᾱ_t) x_t + √ᾱ_t v_θ, a skip connection that makes
            ε at high noise (≈ x_t) trivial, so DDIM's 1/√ᾱ_t amplification of ε errors has nothing
            to amplify. The loss is the same ε loss either way.
    """

    @classmethod
    def from_config(cls, c) -> "GaussianDiffusion":
        """Build from any object with ``timesteps``, ``schedule`` and ``parameterisation``."""
        return cls(c.timesteps, c.schedule, c.parameterisation)

    def __init__(self, timesteps: int = 1000, schedule: str = "cosine", parameterisation: str = "eps"):
        super().__init__()
        if parameterisation not in ("eps", "v"):
            raise ValueError(f"unknown parameterisation {parameterisation!r}; use 'eps' or 'v'")
        self.parameterisation = parameterisation
        betas = {"cosine": cosine_betas, "linear": linear_betas}[schedule](timesteps)
        alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        self.timesteps = timesteps
        for name, val in {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - alphas_cumprod).sqrt(),
            "posterior_variance": betas * (1 - prev) / (1 - alphas_cumprod),
        }.items():
            self.register_buffer(name, val.float(), persistent=False)

    def eps(self, denoiser: Denoiser, x_t: torch.Tensor, t: torch.Tensor, cond: Any, mask: torch.Tensor) -> torch.Tensor:
        """ε_θ(x_t, t) from the denoiser's output (see ``parameterisation``)."""
        out = denoiser(x_t, t, cond, mask)
        if self.parameterisation == "eps":
            return out
        return self._at(self.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t + self._at(self.sqrt_alphas_cumprod, t, x_t) * out

    def x0_from_output(self, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The clean estimate a denoiser output stands for (for a denoiser that refines its own estimate)."""
        a, s = self._at(self.sqrt_alphas_cumprod, t, x_t), self._at(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        return (x_t - s * out) / a if self.parameterisation == "eps" else a * x_t - s * out

    def output_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The denoiser output that stands for the clean estimate ``x0`` (inverse of :meth:`x0_from_output`)."""
        a, s = self._at(self.sqrt_alphas_cumprod, t, x_t), self._at(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        return (x_t - a * x0) / s if self.parameterisation == "eps" else (a * x_t - x0) / s

    def _at(self, buf: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _expand(buf[t].to(x.dtype), x)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``√ᾱ_t x0 + √(1-ᾱ_t) ε`` for x0 (B, ...), t (B,)."""
        return self._at(self.sqrt_alphas_cumprod, t, x0) * x0 + self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def loss(self, denoiser: Denoiser, x0: torch.Tensor, cond: Any, mask: torch.Tensor,
             weight: torch.Tensor | None = None, t: torch.Tensor | None = None,
             generator: torch.Generator | None = None,
             x0_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
             input_perturbation: float = 0.0, x0_loss_until: float = 1.0) -> torch.Tensor:
        """Mean of ``||ε - ε_θ(x_t, t)||²`` over the entries to generate.

        Args:
            x0: (B, ...) clean data.
            mask: (B, ...) bool over leading dims of x0; True = given (no loss).
            weight: broadcastable to x0; 0 drops entries (e.g. padding).
            t: (B,) steps, drawn uniformly when None.
            x0_loss: optional ``f(x0_hat, alpha_bar) -> (B,)`` added to the loss, weighted by ᾱ_t
                (so toward low noise): a term on the network's estimate of the clean data
                ``x0_hat`` (B, ...) (given entries set to their values), e.g. a structure term.
            x0_loss_until: ``x0_loss`` counts only for samples noised to at most this fraction of the steps
                (t < fraction × timesteps; 1: all). At high noise x0_hat is the mean over many clean samples,
                which a term made for one sample (no overlaps, say) would bias: held there it pulls the
                estimate, and so every sample drawn through it, off the data.
            input_perturbation: γ of input perturbation (Ning et al. 2023, "Input perturbation reduces exposure
                bias in diffusion models"): x_t is made with ε + γ ξ (ξ a second Gaussian) while the target stays
                ε, so the denoiser learns to take out more error than the noise level says, as a sampler's inputs
                (built from its own earlier estimates) carry. 0: the plain loss.
        """
        b = x0.shape[0]
        if t is None:
            t = _randn_like_gen((b,), x0, generator, integers=self.timesteps).long()
        noise = _randn_like_gen(x0.shape, x0, generator)
        given = _expand(mask, x0)
        extra = input_perturbation * _randn_like_gen(x0.shape, x0, generator) if input_perturbation > 0 else 0.0
        x_t = torch.where(given, x0, self.q_sample(x0, t, noise + extra))
        eps = self.eps(denoiser, x_t, t, cond, mask)
        w = (~given).to(x0.dtype)
        if weight is not None:
            w = w * weight
        w = w.expand_as(x0)
        loss = ((eps - noise) ** 2 * w).sum() / w.sum().clamp(min=1.0)
        if x0_loss is None:
            return loss
        alpha_bar = self.alphas_cumprod[t].to(x0.dtype)
        counts = (t < x0_loss_until * self.timesteps).to(x0.dtype)
        x0_hat = torch.where(given, x0, self.predict_x0(x_t, t, eps))
        return loss + (counts * alpha_bar * x0_loss(x0_hat, alpha_bar)).mean()

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (x_t - self._at(self.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / self._at(self.sqrt_alphas_cumprod, t, x_t)

    def step_sequence(self, sampler: str, steps: int) -> list[int]:
        """The diffusion steps :meth:`sample` visits, from noise to data (one denoiser call each).

        ``ddim``: ``steps`` evenly spaced steps (fewer when ``steps`` exceeds ``timesteps``); ``dpm2m``: steps
        evenly spaced in log signal-to-noise ratio (as DPM-Solver takes them; on evenly spaced steps its
        extrapolation across the first, long step is worse than DDIM), fewer where two round to one step;
        ``ancestral``: every step, whatever ``steps`` is.
        """
        if sampler == "ancestral":
            return list(range(self.timesteps - 1, -1, -1))
        if sampler == "dpm2m":
            snr = 0.5 * (self.alphas_cumprod / (1 - self.alphas_cumprod)).log()  # falls with t
            targets = torch.linspace(float(snr[-1]), float(snr[0]), max(2, steps), device=snr.device)
            nearest = (snr[None, :] - targets[:, None]).abs().argmin(1)
            return sorted({int(t) for t in nearest}, reverse=True)[:steps]
        if sampler == "ddim":
            return _evenly(self.timesteps - 1, steps)
        raise ValueError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")

    def restart_step(self, restart: float) -> int:
        """The diffusion step of the restart level ``restart`` (a fraction of :attr:`timesteps`, 0 to 1;
        at least step 1 when above 0, at most the last step); 0 for 0."""
        if not 0 <= restart <= 1:
            raise ValueError(f"the restart level must lie between 0 (off) and 1, got {restart}")
        return 0 if restart == 0 else min(self.timesteps - 1, max(1, round(restart * self.timesteps)))

    def paths(self, sampler: str, steps: int, restart: float = 0.0, restart_steps: int = 5,
              restarts: int = 1) -> list[list[int]]:
        """The step sequences :meth:`sample` runs, each from noise (or re-noised) to data: first
        :meth:`step_sequence`, then per restart ``restart_steps`` evenly spaced steps from
        :meth:`restart_step` to 0 (``ddim``; ``ancestral`` takes every step from there, whatever
        ``restart_steps`` is). One denoiser call per entry."""
        out = [self.step_sequence(sampler, steps)]
        restart_t = self.restart_step(restart)
        if restart_t == 0:
            return out
        again = list(range(restart_t, -1, -1)) if sampler == "ancestral" else _evenly(restart_t, restart_steps)
        return out + [again] * restarts

    def calls(self, sampler: str, steps: int, **restart) -> int:
        """Denoiser calls per :meth:`sample` (all of :meth:`paths`; ``restart`` its restart keywords)."""
        return sum(map(len, self.paths(sampler, steps, **restart)))

    @torch.no_grad()
    def sample(self, denoiser: Denoiser, x_given: torch.Tensor, cond: Any, mask: torch.Tensor,
               steps: int = 50, sampler: str = "ddim", eta: float = 0.0,
               generator: torch.Generator | None = None, progress: bool = False,
               clip_x0: float | None = None, noise_scale: float = 1.0,
               restart: float = 0.0, restart_steps: int = 5, restarts: int = 1) -> torch.Tensor:
        """Generate the entries of ``x_given`` where ``mask`` is False.

        Args:
            x_given: (B, ...) clean values where mask is True (others ignored).
            mask: (B, ...) bool, True = given; given entries come back exactly.
            steps: DDIM steps (``sampler="ddim"``, ``eta=0`` deterministic), DPM-Solver++(2M) steps
                (``sampler="dpm2m"``, Lu et al. 2022: each step extrapolates the clean estimate from this step's
                and the previous step's, second order in the log signal-to-noise ratio; the first step of a
                path and the last, to the data, are DDIM's), or ignored for ``sampler="ancestral"`` (all
                ``timesteps`` steps).
            clip_x0: clamp each step's estimate of x0 to [-clip_x0, clip_x0] (the data's range),
                which stops errors of ε at high noise, amplified by 1/√ᾱ_t, from blowing up.
            noise_scale: temperature τ: the starting noise x_T ~ N(0, τ²) (and ancestral steps' noise, and
                DDIM's with ``eta`` > 0, and a restart's re-noising, times τ); 1 is the plain sampler.
            restart: Restart sampling (Xu et al. 2023, "Restart sampling for improving generative processes"):
                after reaching the data, re-noise the sample forward to the step ``restart`` of the way to
                pure noise (:meth:`restart_step`; fresh noise, the forward process q(x_t | x_0)) and sample
                back to the data again in ``restart_steps`` steps (:meth:`paths`; ``ancestral``: every step),
                ``restarts`` times. The fresh noise contracts the errors a trajectory has accumulated on its way
                down, where the denoiser is most accurate. 0: off.
        Returns:
            (B, ...) samples.
        """
        from tqdm import tqdm

        paths = self.paths(sampler, steps, restart, restart_steps, restarts)
        given = _expand(mask, x_given)
        x = _randn_like_gen(x_given.shape, x_given, generator) * noise_scale
        b = x.shape[0]
        bar = tqdm(total=sum(map(len, paths)), disable=not progress, desc=f"{sampler} sampling", leave=False)
        for n, seq in enumerate(paths):
            previous = None  # (x0, log-SNR) of the step before, for dpm2m's second order
            if n > 0:
                t = torch.full((b,), seq[0], device=x.device, dtype=torch.long)
                x = self.q_sample(x, t, _randn_like_gen(x.shape, x, generator) * noise_scale)
            for i, step in enumerate(seq):
                bar.update()
                t = torch.full((b,), step, device=x.device, dtype=torch.long)
                x = torch.where(given, x_given, x)
                eps = self.eps(denoiser, x, t, cond, mask)
                x0 = self.predict_x0(x, t, eps)
                if clip_x0 is not None:  # keep the x0 estimate in the data's range; ε consistent with it
                    x0 = x0.clamp(-clip_x0, clip_x0)
                    eps = (x - self._at(self.sqrt_alphas_cumprod, t, x) * x0) / self._at(
                        self.sqrt_one_minus_alphas_cumprod, t, x)
                if sampler == "ancestral":
                    mean = (self._at(self.betas, t, x) * self._at(self.alphas_cumprod_prev, t, x).sqrt() * x0
                            + (1 - self._at(self.alphas_cumprod_prev, t, x)) * (1 - self._at(self.betas, t, x)).sqrt()
                            * x) / (1 - self._at(self.alphas_cumprod, t, x))
                    noise = _randn_like_gen(x.shape, x, generator)
                    x = mean + (self._at(self.posterior_variance, t, x).sqrt() * noise * noise_scale if step > 0 else 0)
                else:
                    a_t = self.alphas_cumprod[step]
                    a_prev = self.alphas_cumprod[seq[i + 1]] if i + 1 < len(seq) else torch.ones((), device=x.device)
                    if sampler == "dpm2m":
                        lam = 0.5 * (a_t / (1 - a_t)).log()  # log(α/σ) of this step
                        if previous is not None and i + 1 < len(seq):
                            lam_next = 0.5 * (a_prev / (1 - a_prev)).log()
                            r = (lam - previous[1]) / (lam_next - lam)
                            x0, previous = x0 + (x0 - previous[0]) / (2 * r), (x0, lam)
                            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()  # DDIM's step from the extrapolated x0
                        else:
                            previous = (x0, lam)
                    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp(min=0).sqrt()
                    noise = _randn_like_gen(x.shape, x, generator) if eta > 0 else 0
                    x = (a_prev.sqrt() * x0 + (1 - a_prev - sigma ** 2).clamp(min=0).sqrt() * eps
                         + sigma * noise * noise_scale)
        bar.close()
        return torch.where(given, x_given, x)
