"""Samplers: one loop, four step rules (DDNM, DDNM+, DDRM, and the reference's SVD-free one).

A sampler is (denoiser, step rule, x_T, schedule, noise source). The loop asks
the denoiser (plain or an EquS wrapper, see functions/equivariance.py) for
(x0, eps) at each reverse step and hands them to the step rule, which enforces
the measurement y and returns x_{t-1}. Steps whose schedule goes back up in time
(RePaint time travel) re-noise the last x0 prediction instead: the model's own
prediction, before the projection, as the official DDNM does ('x0'), or the
projected x0_hat ('x0_hat', consistent with y).

State stays on the sampling device: the loop keeps the current x_t and the last
x0 prediction, nothing else, and never reads a value back to the host; pass a
`callback` to look at intermediate states.
"""
import math
from dataclasses import dataclass, field, asdict
from typing import Callable, List, Optional, Sequence

import torch

from functions.diffusion import NoiseLevels
from functions.equivariance import make_denoiser
from functions.noise import PerImageNoise, scaled_randn_like
from functions.schedules import Step, build_schedule

SAMPLERS = ("ddnm", "ddnm_plus", "ddrm", "simplified")
TRAVEL_FROM = ("x0", "x0_hat")
SIMPLIFIED_NOISE = ("reference", "ddim")


class DDNMRule:
    """Null-space projection x0_hat = x0 - A^+(A x0 - y), then the DDIM-like update.

    x_next = sqrt(abar_next) x0_hat + sqrt(1 - abar_next) (eta z + sqrt(1 - eta^2) eps)
    """

    def __init__(self, op, y, eta: float):
        self.op, self.y, self.eta = op, y, float(eta)
        self._pinv_y = op.A_pinv(y)
        if op.full_rank:     # handed out as x0_hat every step: never a view of the caller's y
            self._pinv_y = self._pinv_y.clone()

    def init(self, x_T, abar_first):
        return x_T

    def project(self, x0, abar_next):
        """x0 - A^+(A x0 - y), as null_space(x0) + A^+ y with A^+ y formed once
        (added in place: null_space returns a new tensor). Where A^+ A = I (denoising)
        the null space is empty and x0_hat is A^+ y itself, shared from step to step
        (the loop only reads it)."""
        if self.op.full_rank:
            return self._pinv_y
        return self.op.null_space(x0).add_(self._pinv_y)

    def step(self, x_t, x0, eps, abar_t, abar_next, noise):
        x0_hat = self.project(x0, abar_next)
        a, sigma_next = math.sqrt(abar_next), math.sqrt(1 - abar_next)
        c_eps = sigma_next * math.sqrt(1 - self.eta ** 2)
        if self.eta > 0 and sigma_next > 0:
            # the fresh noise draw, scaled as it is drawn, is the output buffer: two fused adds
            # (none at the last step, t_next = -1, where its scale sigma_next eta is 0)
            x_next = scaled_randn_like(noise, x0, sigma_next * self.eta).add_(eps, alpha=c_eps)
            return x_next.add_(x0_hat, alpha=a), x0_hat
        return torch.mul(x0_hat, a).add_(eps, alpha=c_eps), x0_hat   # in x0_hat's dtype, like the eta > 0 path


class DDNMPlusRule(DDNMRule):
    """DDNM+ (noisy y): the range-space correction is scaled by Lambda_t (DDNM Eq. 17)
    and the added noise by Lambda_noise (the noise term of Eq. 51), both from the
    operator's singular values, so that the noise carried in y is not amplified.
    sigma_y is in model space ([-1, 1] images, i.e. twice the command-line value)."""

    def __init__(self, op, y, eta: float, sigma_y: float):
        super().__init__(op, y, eta)
        self.sigma_y = float(sigma_y)

    def step(self, x_t, x0, eps, abar_t, abar_next, noise):
        a, sigma_next = math.sqrt(abar_next), math.sqrt(1 - abar_next)
        correction = self.op.A_pinv(self.op.A(x0) - self.y)
        x0_hat = x0 - self.op.Lambda(correction, a, self.sigma_y, sigma_next, self.eta)
        z = noise.randn_like(x0)
        x_next = a * x0_hat + self.op.Lambda_noise(z, a, self.sigma_y, sigma_next, self.eta, eps)
        return x_next, x0_hat


class SimplifiedRule(DDNMRule):
    """The reference's SVD-free DDNM / DDNM+ (`--simplified`): only A and an approximate inverse Ap.

    One scalar Lambda for every coordinate (DDNM Eq. 19), with c = a_y sigma_y:
        sigma_t >= c: lam = 1, gamma = sqrt(sigma_t^2 - c^2);  else lam = sigma_t / c, gamma = 0
        x0_hat = x0 - lam Ap(A x0 - y)
        x_next = sqrt(abar_next) x0_hat + g (eta z + sqrt(1 - eta^2) eps)
    noise 'reference' (the official loop, quirks kept): sigma_t = sqrt(1 - abar_next^2),
    a_y = abar_next, g = gamma sqrt(1 - abar_next), so even at sigma_y = 0 the stochastic
    term is scaled twice. noise 'ddim' (corrected): sigma_t = sqrt(1 - abar_next),
    a_y = sqrt(abar_next), g = gamma; at sigma_y = 0 this is DDNMRule's update, computed
    the same way (its projection), bit for bit.
    """

    def __init__(self, op, y, eta: float, sigma_y: float = 0.0, noise_mode: str = "reference"):
        if noise_mode not in SIMPLIFIED_NOISE:
            raise ValueError(f"simplified_noise must be one of {SIMPLIFIED_NOISE}, got {noise_mode!r}")
        super().__init__(op, y, eta)
        self.sigma_y, self.noise_mode = float(sigma_y), noise_mode

    def scalars(self, abar_next: float):
        """(lam, scale of the stochastic term) at a step into abar_next."""
        if self.noise_mode == "reference":
            sigma_t, c = math.sqrt(1 - abar_next ** 2), abar_next * self.sigma_y
        else:
            sigma_t, c = math.sqrt(1 - abar_next), math.sqrt(abar_next) * self.sigma_y
        if c == 0:
            lam, gamma = 1.0, sigma_t      # (not sqrt(sigma_t^2), which may round differently)
        elif sigma_t >= c:
            lam, gamma = 1.0, math.sqrt(sigma_t ** 2 - c ** 2)
        else:
            lam, gamma = sigma_t / c, 0.0
        return lam, gamma * math.sqrt(1 - abar_next) if self.noise_mode == "reference" else gamma

    def step(self, x_t, x0, eps, abar_t, abar_next, noise):
        lam, g = self.scalars(abar_next)
        if self.noise_mode == "ddim" and lam == 1.0:
            x0_hat = self.project(x0, abar_next)
        else:
            x0_hat = x0 - lam * self.op.A_pinv(self.op.A(x0) - self.y)
        a, c_eps = math.sqrt(abar_next), g * math.sqrt(1 - self.eta ** 2)
        if self.eta > 0 and g > 0:
            x_next = scaled_randn_like(noise, x0, g * self.eta).add_(eps, alpha=c_eps)
            return x_next.add_(x0_hat, alpha=a), x0_hat
        return torch.mul(x0_hat, a).add_(eps, alpha=c_eps), x0_hat


class DDRMRule:
    """DDRM's update in the operator's spectral basis (`efficient_generalized_steps`).

    Per spectral coordinate: where the measurement is noisier than x_t (s sigma_next
    > sigma_0) the coordinate is pulled towards y/s (etaB); where it is less noisy,
    towards the measurement residual (etaA); coordinates without a measurement
    follow DDIM (etaC). Selections use torch.where, never boolean indexing, so that
    no step waits on the host.
    """

    def __init__(self, op, y, sigma_0: float, etaA: float, etaB: float, etaC: float):
        self.op, self.sigma_0 = op, float(sigma_0)
        self.etaA, self.etaB, self.etaC = float(etaA), float(etaB), float(etaC)
        self.s = op.singulars()
        self.m = self.s.numel()
        self.U_t_y = op.Ut(y)
        nonzero = self.s > 0
        self.safe_s = torch.where(nonzero, self.s, torch.ones_like(self.s))
        self.Sig_inv_U_t_y = torch.where(nonzero, self.U_t_y / self.safe_s, torch.zeros_like(self.U_t_y))

    def _split(self, v):
        return v[:, : self.m], v[:, self.m:]

    def init(self, x_T, abar_first):
        """p(x_T | y): measured coordinates start at y/s plus just enough noise."""
        B = x_T.shape[0]
        sigma_T = math.sqrt((1 - abar_first) / abar_first)
        large = self.s * sigma_T > self.sigma_0
        inv = torch.where(large, self.sigma_0 / self.safe_s, torch.zeros_like(self.s))
        start = torch.where(large, self.Sig_inv_U_t_y, torch.zeros_like(self.U_t_y))
        z = x_T.reshape(B, -1)
        z_m, z_rest = self._split(z)
        remaining_m = (sigma_T ** 2 - inv ** 2).clamp_min(0).sqrt()
        # x0 + sigma_T z in spectral coordinates; x_T = sqrt(abar_T) (x0 + sigma_T z). The reference
        # divides by sigma_T instead, which is sqrt(abar_T) / sqrt(1 - abar_T): the same to 2e-5 from
        # t = 990 on, but 4% too large at t = 500 (2 steps) and 100x at t = 0 (1 step)
        coords = torch.cat([start + remaining_m * z_m, sigma_T * z_rest], dim=1)
        return self.op.V(coords).mul_(math.sqrt(abar_first))

    def step(self, x_t, x0, eps, abar_t, abar_next, noise):
        sigma_next = math.sqrt((1 - abar_next) / abar_next)
        s, sigma_0 = self.s, self.sigma_0
        Vt_x0 = self.op.Vt(x0)
        z_C = noise.randn_like(Vt_x0)
        z_A = noise.randn_like(self.U_t_y)
        z_B = noise.randn_like(self.U_t_y)

        std_C = sigma_next * self.etaC
        missing = Vt_x0 + math.sqrt(max(sigma_next ** 2 - std_C ** 2, 0.0)) * self.op.Vt(eps) + std_C * z_C

        Vt_x0_m, _ = self._split(Vt_x0)
        missing_m, missing_rest = self._split(missing)
        std_A = sigma_next * self.etaA
        residual = (self.U_t_y - Vt_x0_m * s) / max(sigma_0, 1e-30)
        after = Vt_x0_m + math.sqrt(max(sigma_next ** 2 - std_A ** 2, 0.0)) * residual + std_A * z_A
        diff_B = (sigma_next ** 2 - sigma_0 ** 2 / self.safe_s ** 2 * self.etaB ** 2).clamp_min(0).sqrt()
        before = self.Sig_inv_U_t_y * self.etaB + (1 - self.etaB) * Vt_x0_m + diff_B * z_B

        is_before = s * sigma_next > sigma_0
        is_after = s * sigma_next < sigma_0
        coords_m = torch.where(is_before, before, torch.where(is_after, after, missing_m))
        x_next = math.sqrt(abar_next) * self.op.V(torch.cat([coords_m, missing_rest], dim=1))
        return x_next, x0


@torch.no_grad()
def sample(denoiser, rule, x_T: torch.Tensor, schedule: Sequence[Step], levels: NoiseLevels,
           noise, callback: Optional[Callable] = None, clip_x0: bool = False,
           travel_from: str = "x0") -> torch.Tensor:
    """Walk the schedule from x_T and return the final x (at t = -1).

    travel_from: what a time-travel step re-noises. 'x0' (the official DDNM keeps
    x0_t, the prediction before the projection, in `x0_preds` and re-noises
    that) or 'x0_hat' (the projected prediction, which agrees with y).

    clip_x0 clamps each x0 prediction to the image range [-1, 1] before the step
    rule sees it (guided-diffusion's clip_denoised; the official DDNM does not):
    at high noise x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) multiplies small
    eps errors by up to ~150, and in the operator's null space (the chroma, for
    colorization) nothing pulls such errors back. The eps is left as predicted.

    Runs without autograd, so that a model whose weights require grad does not keep
    every step's activations (memory would grow with the number of steps).

    callback(i, step, x, x0_hat) sees the loop's own tensors: treat them as read-only
    (clone what you keep or change).
    """
    if travel_from not in TRAVEL_FROM:
        raise ValueError(f"travel_from must be one of {TRAVEL_FROM}, got {travel_from!r}")
    x = rule.init(x_T, levels.abar(schedule[0].t))
    x0_last = x0_travel = None
    for i, step in enumerate(schedule):
        abar_next = levels.abar(step.t_next)
        if step.is_reverse:
            abar_t = levels.abar(step.t)
            x0, eps = denoiser(x, step.t, abar_t, step.u)
            if clip_x0:
                x0 = x0.clamp(-1, 1)
            x, x0_last = rule.step(x, x0, eps, abar_t, abar_next, noise)
            x0_travel = x0 if travel_from == "x0" else x0_last
        else:  # time travel: re-noise the last x0 prediction up to t_next
            x = noise.randn_like(x0_travel).mul_(math.sqrt(1 - abar_next)).add_(x0_travel, alpha=math.sqrt(abar_next))
        if callback is not None:
            callback(i, step, x, x0_last)
    return x


@dataclass
class SamplerConfig:
    """Everything that chooses a sampling run (the runner fills it from flags).

    sampler: ddnm (becomes DDNM+ when sigma_y > 0), ddnm_plus, ddrm, simplified (the SVD-free rule:
        only A and A_pinv, for composite degradations; see SimplifiedRule).
    sigma_y: noise std of y in model space ([-1, 1]: twice the CLI's --sigma_y).
    schedule: uniform, tas (EquS+'s, official), tas_dedup (without repeated t = 0).
    equs: None, 'alternate' (the paper's EquS) or 'average'.
    clip_x0: clamp x0 predictions to [-1, 1] (off in the reference; see `sample`).
    travel_from: what time travel re-noises: 'x0' (the official DDNM's) or 'x0_hat'.
    simplified_noise: the simplified rule's noise: 'reference' (the official loop's quirks) or 'ddim'.
    """
    sampler: str = "ddnm"
    eta: float = 0.85
    etaB: float = 1.0
    sigma_y: float = 0.0
    steps: int = 100
    schedule: str = "uniform"
    travel_length: int = 1
    travel_repeat: int = 1
    equs: Optional[str] = None
    transform: str = "hflip"
    eps_mapping: str = "official"
    transform_seed: int = 0
    clip_x0: bool = False
    travel_from: str = "x0"
    simplified_noise: str = "reference"

    def to_dict(self):
        return asdict(self)


@dataclass
class SampleResult:
    x0: torch.Tensor
    nfe: int
    schedule: List[Step] = field(repr=False)


def schedule_for(cfg: SamplerConfig, num_timesteps: int = 1000) -> List[Step]:
    """The run's steps: DDRM's uniform schedule is its own range(0, T, T // steps), which differs
    from DDNM's when steps does not divide T (functions/schedules.ddrm_timesteps)."""
    kind = "uniform_ddrm" if cfg.sampler == "ddrm" and cfg.schedule == "uniform" else cfg.schedule
    return build_schedule(cfg.steps, kind, num_timesteps, cfg.travel_length, cfg.travel_repeat)


def first_step_error_gain(schedule: Sequence[Step], levels: NoiseLevels) -> float:
    """How much the first reverse step multiplies an error in the model's eps on its way into x_{t_next}.

    x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) carries the eps error times
    sqrt(1 - abar_t) / sqrt(abar_t), and x_next takes x0 times sqrt(abar_next). With 100
    steps this is about 1; EquS+'s schedule with few steps jumps from t = 998 straight to
    a much lower noise level (5 steps: to t = 561, a gain of 31), and an unclipped x0
    then leaves x_next far off the distribution the model knows."""
    first = next((s for s in schedule if s.is_reverse), None)
    if first is None:
        return 0.0
    a_t, a_next = levels.abar(first.t), levels.abar(first.t_next)
    return math.sqrt(a_next) * math.sqrt(1 - a_t) / math.sqrt(a_t)


def make_rule(cfg: SamplerConfig, op, y):
    if cfg.sampler not in SAMPLERS:
        raise ValueError(f"sampler '{cfg.sampler}' is unknown; choose one of: {', '.join(SAMPLERS)}")
    if not cfg.sigma_y >= 0:      # (also refuses NaN)
        raise ValueError(f"sigma_y must be >= 0, got {cfg.sigma_y}")
    for name in ("eta", "etaB"):
        value = getattr(cfg, name)
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if y.dim() < 2 or y.shape[0] == 0 or y[0].numel() != op.num_measurements:
        raise ValueError(f"y must be (batch, {op.num_measurements}), the measurements of {op.name} at "
                         f"{'x'.join(map(str, op.image_shape[1:]))} (op.A(x)), got shape {tuple(y.shape)}")
    if cfg.sampler == "simplified":
        return SimplifiedRule(op, y, cfg.eta, cfg.sigma_y, cfg.simplified_noise)
    needs = "singulars" if cfg.sampler == "ddrm" else "Lambda" if cfg.sampler == "ddnm_plus" or cfg.sigma_y > 0 else None
    if needs is not None and not hasattr(op, needs):
        raise ValueError(f"sampler '{cfg.sampler}'{' with sigma_y > 0' if cfg.sampler == 'ddnm' else ''} needs an "
                         f"SVD operator; {op.name} has none: use sampler 'simplified'")
    if cfg.sampler == "ddrm":
        return DDRMRule(op, y, cfg.sigma_y, etaA=cfg.eta, etaB=cfg.etaB, etaC=cfg.eta)
    if cfg.sampler == "ddnm_plus" or cfg.sigma_y > 0:
        # the official CLI ran the noise-free sampler for EquS on noisy y; here noisy y always gets DDNM+
        return DDNMPlusRule(op, y, cfg.eta, cfg.sigma_y)
    return DDNMRule(op, y, cfg.eta)


def restore(eps_model, op, y: torch.Tensor, betas: torch.Tensor, cfg: SamplerConfig,
            seeds: Sequence[int] = None, noise=None, x_T: torch.Tensor = None,
            callback: Optional[Callable] = None) -> SampleResult:
    """Restore a batch from its measurements y (B, m).

    Randomness: `noise` (an object with randn_like) or, by default, one seeded
    generator per image from `seeds`, which also draws x_T; image i's result
    depends only on its own seed. Without `seeds` the images get 0..B-1, so pass
    `seeds` (the runner's are per dataset index) whenever batches are split.
    """
    device = y.device
    B = y.shape[0]
    if noise is None:
        noise = PerImageNoise(seeds if seeds is not None else range(B), device=device)
    if x_T is None:
        shape = (B, *op.image_shape)
        x_T = noise.randn_like(torch.empty(shape, device=device, dtype=y.dtype))
    levels = NoiseLevels(betas, device=device)
    schedule = schedule_for(cfg, levels.num_timesteps)
    denoiser = make_denoiser(eps_model, cfg.equs, cfg.transform, cfg.eps_mapping, cfg.transform_seed)
    rule = make_rule(cfg, op, y)
    x = sample(denoiser, rule, x_T, schedule, levels, noise, callback, clip_x0=cfg.clip_x0,
               travel_from=cfg.travel_from)
    return SampleResult(x0=x, nfe=denoiser.nfe, schedule=schedule)
