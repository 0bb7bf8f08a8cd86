"""EquS: wrappers around the denoiser call (where the flip is applied to x_t).

A denoiser here maps (x_t, t, abar_t, u) to (x0, eps): the x0 prediction that the
data-consistency step uses and the eps that the DDIM-like update uses. The
samplers never know which wrapper they hold, so EquS composes with DDNM, DDNM+
and DDRM alike.

- `PlainDenoiser`: eps = model(x_t, t).
- `AlternateEquS` (the paper's dual trajectory): on steps with even u the model
  sees T(x_t) and its x0 prediction is mapped back with T^-1. With
  eps_mapping='official' the eps used in the update is the model's output as it
  came (not mapped back), as the official code does; 'consistent' maps it back
  too, so that x0 and eps describe the same x_t.
- `AverageEquS` (the design card's mode): eps = mean_g T_g^-1 model(T_g x_t), all
  copies through one batched forward pass; each copy counts as one NFE.
"""
import math
from typing import Callable, Sequence, Tuple

import numpy as np
import torch

from functions.transforms import Transform, get_transform, get_transforms

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
EQUS_MODES = ("alternate", "average")
EPS_MAPPINGS = ("official", "consistent")


def predict_x0(x_t, eps, abar_t):
    """x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar), in two passes over the image.

    abar_t is a Python float (what the sampling loop passes: the coefficients go to
    the kernels as arguments) or a tensor that broadcasts against x_t."""
    if isinstance(abar_t, torch.Tensor):
        return torch.addcmul(x_t, eps, -(1 - abar_t).sqrt()).div_(abar_t.sqrt())
    return torch.add(x_t, eps, alpha=-math.sqrt(1 - abar_t)).div_(math.sqrt(abar_t))


class PlainDenoiser:
    """The model's eps and the x0 it implies; counts network evaluations per image."""

    def __init__(self, eps_model: EpsModel):
        self.eps_model = eps_model
        self.nfe = 0

    def eps(self, x_t, t):
        self.nfe += 1
        t_vec = torch.full((x_t.shape[0],), float(t), device=x_t.device)
        return self.eps_model(x_t, t_vec)

    def __call__(self, x_t, t: int, abar_t, u: int) -> Tuple[torch.Tensor, torch.Tensor]:
        eps = self.eps(x_t, t)
        return predict_x0(x_t, eps, abar_t), eps


class AlternateEquS(PlainDenoiser):
    """Every other step (even u) runs on the transformed trajectory T(x_t).

    `transforms` with more than one entry is the paper's "random" variant: one
    transform drawn per transformed step from a generator seeded by `seed`
    (shared by the batch, so results do not depend on how images are batched).
    """

    def __init__(self, eps_model: EpsModel, transforms: Sequence[Transform] = None,
                 eps_mapping: str = "official", seed: int = 0):
        super().__init__(eps_model)
        if eps_mapping not in EPS_MAPPINGS:
            raise ValueError(f"eps_mapping '{eps_mapping}' is unknown; choose one of: {', '.join(EPS_MAPPINGS)}")
        self.transforms = list(transforms) if transforms else [get_transform("hflip")]
        self.eps_mapping = eps_mapping
        # a stream of its own: a torch generator seeded with the run seed itself would replay the
        # draws of the image whose x_T seed equals it (run seed 0: image 0)
        stream = np.random.SeedSequence([int(seed), 0x65717573]).generate_state(1, np.uint32)[0]
        self._choice = torch.Generator().manual_seed(int(stream))

    def transform_for(self, u: int) -> Transform:
        if u % 2 != 0:
            return None
        if len(self.transforms) == 1:
            return self.transforms[0]
        return self.transforms[int(torch.randint(len(self.transforms), (1,), generator=self._choice))]

    def __call__(self, x_t, t, abar_t, u):
        T = self.transform_for(u)
        if T is None:
            return super().__call__(x_t, t, abar_t, u)
        x_g = T(x_t)
        eps_g = self.eps(x_g, t)
        x0 = T.inverse(predict_x0(x_g, eps_g, abar_t))
        eps = T.inverse(eps_g) if self.eps_mapping == "consistent" else eps_g
        return x0, eps


class AverageEquS(PlainDenoiser):
    """Group-averaged denoiser: eps = mean_g T_g^-1 eps(T_g x_t), one batched call."""

    def __init__(self, eps_model: EpsModel, transforms: Sequence[Transform]):
        super().__init__(eps_model)
        self.transforms = list(transforms)
        if not self.transforms:
            raise ValueError("the average mode needs at least one transform")

    def __call__(self, x_t, t, abar_t, u):
        B, G = x_t.shape[0], len(self.transforms)
        copies = torch.cat([T(x_t) for T in self.transforms], dim=0)
        t_vec = torch.full((B * G,), float(t), device=x_t.device)
        eps_all = self.eps_model(copies, t_vec).split(B, dim=0)
        self.nfe += G
        eps = torch.stack([T.inverse(e) for T, e in zip(self.transforms, eps_all)]).mean(0)
        return predict_x0(x_t, eps, abar_t), eps


def make_denoiser(eps_model: EpsModel, equs: str = None, transform: str = "hflip",
                  eps_mapping: str = "official", seed: int = 0) -> PlainDenoiser:
    """The denoiser a sampler runs with: plain, alternate EquS or the group average.

    transform: for 'alternate' a single name (hflip, vflip, rot90, rot180, rot270,
    shift8) or a set to draw from per step (random, d4, 'hflip,rot90'); for
    'average' a set (flips = {id, hflip}, rotations, d4 = all 8 rotations and flips).
    """
    if equs in (None, "", "none"):
        return PlainDenoiser(eps_model)
    if equs == "alternate":
        return AlternateEquS(eps_model, get_transforms(transform), eps_mapping, seed)
    if equs == "average":
        group = get_transforms(transform)
        if not any(T.name == "identity" for T in group):
            group = [get_transform("identity")] + group  # "average over hflip" means {id, hflip}
        return AverageEquS(eps_model, group)
    raise ValueError(f"EquS mode '{equs}' is unknown; choose one of: {', '.join(EQUS_MODES)}")
