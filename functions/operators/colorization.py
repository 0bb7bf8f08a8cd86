"""Colorization: y = 0.3333 R + 0.3334 G + 0.3333 B per pixel (reference `Colorization`).

The SVD is per pixel: V_small is the reference's 3 x 3 SVD basis of the weight row,
spectral coordinates are channel-major (all pixels' first component, then the
second, then the third). y is the gray image (1, H, W) vectorised. A, A^T, A^+ are
the weighted sum and its transposes (A^+ = w y / |w|^2). Reference Lambda_noise
scales the raw channels instead of V_small^T times them (`_reference_noise_coords`).
"""
import torch

from .base import SVDOperator, reference_svd

GRAY_WEIGHTS = (0.3333, 0.3334, 0.3333)


class Colorization(SVDOperator):
    name = "colorization"
    has_reference_lambda = True

    def __init__(self, image_size, channels: int = 3, device="cpu", dtype=torch.float32,
                 lambda_mode: str = "reference"):
        if channels != 3:
            raise ValueError(f"colorization needs channels=3 (RGB), got channels={channels}")
        super().__init__(image_size, channels, device, dtype, lambda_mode)
        w = torch.tensor([GRAY_WEIGHTS], dtype=torch.float32)
        U, S, V = reference_svd(w, dtype)
        self._u = float(U[0, 0])
        self._V_small = self._t(V)
        self._w = self._t(U[0, 0] * S[0] * V[:, 0])   # = the weights, exactly u s v_1 of the factors
        self._s = self._t(S[:1]).repeat(self.height * self.width)
        w64 = self._w.double()
        eye = torch.eye(3, dtype=torch.float64, device=w64.device)
        self._null = (eye - torch.outer(w64, w64) / (w64 @ w64)).to(self.dtype)    # I - A^+ A per pixel

    def singulars(self):
        return self._s

    def Vt(self, x):
        x = self._image(x)
        return torch.einsum("bchw,ck->bkhw", x, self._V_small).reshape(x.shape[0], -1)

    def V(self, v):
        v = self._image(v)
        return torch.einsum("bkhw,ck->bchw", v, self._V_small)

    def U(self, y):
        return self._u * self._flat(y)

    def Ut(self, y):
        return self._u * self._flat(y)

    def A(self, x):
        x = self._image(x)
        return torch.einsum("bchw,c->bhw", x, self._w).reshape(x.shape[0], -1)

    def At(self, y):
        return self._flat(y).reshape(-1, 1, self.height, self.width) * self._w.reshape(1, 3, 1, 1)

    def A_pinv(self, y):
        return self.At(y) / (self._w ** 2).sum()

    def null_space(self, x):
        """(I - w w^T / |w|^2) applied to each pixel's colour: one 3 x 3 product."""
        x = self._image(x)
        return torch.einsum("dc,bchw->bdhw", self._null, x)

    def _reference_noise_coords(self, x):
        return self._flat(self._image(x))
