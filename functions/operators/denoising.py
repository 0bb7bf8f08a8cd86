"""Denoising: A = I (reference `Denoising`); y is the image vectorised.

The reference's DDNM+ noise term differs from the SVD formula only at its edges
(sigma_y = 0, or sigma_t exactly a sigma_y): it returns
sqrt(sigma_t^2 - a^2 sigma_y^2) z when sigma_t >= a sigma_y and sigma_t eta z
otherwise, never using eps; "reference" mode reproduces that.
"""
import torch

from .base import SVDOperator, _scalar


class Denoising(SVDOperator):
    name = "denoising"
    full_rank = True
    has_reference_lambda = True

    def __init__(self, image_size, channels: int, device="cpu", dtype=torch.float32,
                 lambda_mode: str = "reference"):
        super().__init__(image_size, channels, device, dtype, lambda_mode)
        self._s = torch.ones(self.N, device=self.device, dtype=dtype)

    def singulars(self):
        return self._s

    def Vt(self, x):
        return self._flat(self._image(x))

    def V(self, v):
        return self._image(v)

    def A(self, x):
        return self._flat(self._image(x))

    def At(self, y):
        return self._image(y)

    def A_pinv(self, y):
        return self._image(y)

    def null_space(self, x):
        return torch.zeros_like(self._image(x))     # A = I sees everything

    def lambda_coefficients(self, a, sigma_y, sigma_t, eta):
        lam, d1, d2 = super().lambda_coefficients(a, sigma_y, sigma_t, eta)
        if not self._reference_active():
            return lam, d1, d2
        a, sigma_y, sigma_t, eta = (_scalar(t, self._s) for t in (a, sigma_y, sigma_t, eta))
        a_sy = a * sigma_y
        factor = torch.where(sigma_t >= a_sy, (sigma_t ** 2 - a_sy ** 2).clamp_min(0).sqrt(), sigma_t * eta)
        return lam, factor.expand_as(self._s), torch.zeros_like(self._s)
