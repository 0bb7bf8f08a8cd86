"""Inpainting: keep the pixels where the mask is 1, in all channels (reference `Inpainting`).

y is the kept pixels, pixel-major with channels interleaved:
x.permute(0, 2, 3, 1).reshape(B, -1)[:, kept]. Spectral coordinates (V is a
permutation): the kept values in that order, then the missing ones channel by
channel, as the reference orders them. Built with index tensors, not the
reference's Python loop (5.8 s at 256x256).
"""
import torch

from .base import SVDOperator, interleaved_index, inverse_index
from ..masks import resolve_mask


class Inpainting(SVDOperator):
    name = "inpainting"
    has_reference_lambda = True

    def __init__(self, image_size, channels: int, mask=None, device="cpu", dtype=torch.float32,
                 lambda_mode: str = "reference", seed: int = 0):
        super().__init__(image_size, channels, device, dtype, lambda_mode)
        self._set_mask(resolve_mask(mask, (self.height, self.width), seed=seed))

    def _set_mask(self, mask: torch.Tensor):
        mask = resolve_mask(mask, (self.height, self.width))
        self.mask = mask.to(self.device)
        flat = self.mask.reshape(-1)
        kept, missing = torch.nonzero(flat).reshape(-1), torch.nonzero(~flat).reshape(-1)
        hw, C = flat.numel(), self.channels
        # indices into the channel-major flat image: kept pixel-major with channels interleaved,
        # then the missing ones channel by channel (the reference's V^T order)
        self._kept_idx = interleaved_index(kept, C, hw)
        missing_idx = (torch.arange(C, device=self.device)[:, None] * hw + missing[None, :]).reshape(-1)
        self._order = torch.cat([self._kept_idx, missing_idx])
        self._unorder = inverse_index(self._order)
        self._s = torch.ones(self._kept_idx.numel(), device=self.device, dtype=self.dtype)
        self._missing = (~self.mask).to(self.dtype)      # (H, W), broadcast over channels

    def singulars(self):
        return self._s

    def Vt(self, x):
        x = self._image(x)
        return x.reshape(x.shape[0], -1).index_select(1, self._order)

    def V(self, v):
        v = self._flat(v)
        return v.index_select(1, self._unorder).reshape(v.shape[0], *self.image_shape)

    def A(self, x):
        x = self._image(x)
        return x.reshape(x.shape[0], -1).index_select(1, self._kept_idx)

    def At(self, y):
        y = self._flat(y)
        out = y.new_zeros(y.shape[0], self.N).index_copy_(1, self._kept_idx, y)
        return out.reshape(y.shape[0], *self.image_shape)

    def A_pinv(self, y):
        return self.At(y)

    def null_space(self, x):
        return self._image(x) * self._missing

    def state_dict(self):
        return {"mask": self.mask.to(torch.uint8).cpu()}

    def load_state_dict(self, state):
        if set(state) != {"mask"}:
            raise ValueError(f"inpainting state must hold exactly 'mask', got keys {sorted(state)}")
        self._set_mask(state["mask"])
