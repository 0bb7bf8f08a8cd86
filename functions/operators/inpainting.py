"""Inpainting: keep the pixels where the mask is 1, in all channels (reference `Inpainting`).

y is the kept pixels, pixel-major with channels interleaved:
x.permute(0, 2, 3, 1).reshape(B, -1)[:, kept]. Spectral coordinates (V is a
permutation): the kept values in that order, then the missing ones channel by
channel, as the reference orders them. Built with index tensors, not the
reference's Python loop (5.8 s at 256x256).
"""
import torch

from .base import SVDOperator
from ..masks import resolve_mask


class Inpainting(SVDOperator):
    name = "inpainting"
    has_reference_lambda = True

    def __init__(self, image_size: int, channels: int, mask=None, device="cpu", dtype=torch.float32,
                 lambda_mode: str = "reference", seed: int = 0):
        super().__init__(image_size, channels, device, dtype, lambda_mode)
        self._set_mask(resolve_mask(mask, image_size, seed=seed))

    def _set_mask(self, mask: torch.Tensor):
        mask = resolve_mask(mask, self.image_size)
        self.mask = mask.to(self.device)
        flat = mask.reshape(-1)
        self._kept = torch.nonzero(flat).reshape(-1).to(self.device)
        self._missing = torch.nonzero(~flat).reshape(-1).to(self.device)
        self._s = torch.ones(self.channels * self._kept.numel(), device=self.device, dtype=self.dtype)

    def singulars(self):
        return self._s

    def _pixels(self, x):
        x = self._image(x)
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.channels)

    def _image_from_pixels(self, p):
        n = self.image_size
        return p.reshape(p.shape[0], n, n, self.channels).permute(0, 3, 1, 2)

    def Vt(self, x):
        p = self._pixels(x)
        B = p.shape[0]
        kept = p.index_select(1, self._kept).reshape(B, -1)
        missing = p.index_select(1, self._missing).permute(0, 2, 1).reshape(B, -1)
        return torch.cat([kept, missing], dim=1)

    def V(self, v):
        v = self._flat(v)
        B, C, k = v.shape[0], self.channels, self._kept.numel()
        p = v.new_empty(B, self.image_size ** 2, C)
        p[:, self._kept, :] = v[:, : k * C].reshape(B, k, C)
        p[:, self._missing, :] = v[:, k * C:].reshape(B, C, -1).permute(0, 2, 1)
        return self._image_from_pixels(p)

    def A(self, x):
        p = self._pixels(x)
        return p.index_select(1, self._kept).reshape(p.shape[0], -1)

    def At(self, y):
        y = self._flat(y)
        B, C = y.shape[0], self.channels
        p = y.new_zeros(B, self.image_size ** 2, C)
        p[:, self._kept, :] = y.reshape(B, -1, C)
        return self._image_from_pixels(p)

    def A_pinv(self, y):
        return self.At(y)

    def state_dict(self):
        return {"mask": self.mask.to(torch.uint8).cpu()}

    def load_state_dict(self, state):
        if set(state) != {"mask"}:
            raise ValueError(f"inpainting state must hold exactly 'mask', got keys {sorted(state)}")
        self._set_mask(state["mask"])
