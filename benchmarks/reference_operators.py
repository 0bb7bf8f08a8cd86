"""The official code's operator habits, for the sampler-overhead benchmark only.

The official DDNM / EquS loop calls `A_funcs.A` and `A_funcs.A_pinv` of its
`svd_operators.py` classes every step, and what those calls cost is part of the
reference's per-step overhead. This module rebuilds each of the ten operators
the way those classes compute, call by call, from the factors of this project's
operator (so both compute the same linear maps; tests/test_benchmark_reference_operators.py
checks A and A^+ against `functions.operators`):

- the generic A = U(s * Vt(x)[:, :m]) and A^+ = V(add_zeros(factors * Ut(y))), with
  `singulars()` rebuilt (repeated) on every call and 1/s recomputed on every call;
- every V, Vt, U, Ut, add_zeros starts with `vec.clone()`;
- spectral reorderings scatter into a freshly zeroed buffer, then permute, and the
  next reshape copies the permuted view;
- per-patch and per-pixel bases are applied as batched matrix-vector products
  (..., k, 1);
- Walsh-Hadamard is the in-place butterfly, one clone and two slice writes per
  stage, log2(H W) stages;
- inpainting gathers and scatters with its kept / missing index lists.

Nothing here is used outside `benchmarks/`; it is not an operator to restore with.
"""
import torch

from functions.operators import (AveragePoolSR, BicubicSR, BlockCS, Colorization, Denoising, Inpainting,
                                 SeparableBlur, WalshHadamardCS)
from functions.operators.compressed_sensing import BLOCK


class _Generic:
    """A and A^+ from V, Vt, U, Ut, singulars and add_zeros, as the official base class writes them."""

    def A(self, vec):
        temp = self.Vt(vec)
        singulars = self.singulars()
        return self.U(singulars * temp[:, : singulars.shape[0]])

    def A_pinv(self, vec):
        temp = self.Ut(vec)
        singulars = self.singulars()
        factors = 1.0 / singulars
        factors[singulars == 0] = 0.0
        m = singulars.shape[0]
        temp[:, :m] = temp[:, :m] * factors
        return self.V(self.add_zeros(temp))

    def U(self, vec):
        return vec.clone().reshape(vec.shape[0], -1)

    def Ut(self, vec):
        return vec.clone().reshape(vec.shape[0], -1)

    def singulars(self):
        """The classes whose singular values are one fixed vector keep it as `s`."""
        return self.s

    def add_zeros(self, vec):
        """Zero-pad to the image's size C*H*W (the classes whose spectrum is the image's)."""
        return self._zero_padded(vec, self.C * self.n * self.n)

    def _zero_padded(self, vec, size):
        flat = vec.clone().reshape(vec.shape[0], -1)
        out = torch.zeros(vec.shape[0], size, device=vec.device)
        out[:, : flat.shape[1]] = flat
        return out


class AveragePoolingStyle(_Generic):
    def __init__(self, op: AveragePoolSR):
        self.C, self.n, self.r, self.k = op.channels, op.image_size, op.factor, op.small
        self.u = op._u
        self.V_small = op._V_small
        self.Vt_small = op._V_small.T
        self.s_small = op._s[:1]

    def Vt(self, vec):
        B, C, n, r, k = vec.shape[0], self.C, self.n, self.r, self.k
        p = vec.clone().reshape(B, C, n, n).unfold(2, r, r).unfold(3, r, r)
        p = p.contiguous().reshape(B, C, -1, r * r)
        p = torch.matmul(self.Vt_small, p.reshape(-1, r * r, 1)).reshape(B, C, -1, r * r)
        out = torch.zeros(B, C * n * n, device=vec.device)
        out[:, : C * k * k] = p[:, :, :, 0].reshape(B, C * k * k)
        for i in range(r * r - 1):
            out[:, C * k * k + i:: r * r - 1] = p[:, :, :, i + 1].reshape(B, C * k * k)
        return out

    def V(self, vec):
        B, C, n, r, k = vec.shape[0], self.C, self.n, self.r, self.k
        flat = vec.clone().reshape(B, -1)
        p = torch.zeros(B, C, k * k, r * r, device=vec.device)
        p[:, :, :, 0] = flat[:, : C * k * k].reshape(B, C, -1)
        for i in range(r * r - 1):
            p[:, :, :, i + 1] = flat[:, C * k * k + i:: r * r - 1].reshape(B, C, -1)
        p = torch.matmul(self.V_small, p.reshape(-1, r * r, 1)).reshape(B, C, k, k, r, r)
        return p.permute(0, 1, 2, 4, 3, 5).contiguous().reshape(B, C * n * n)

    def U(self, vec):
        return self.u * vec.clone().reshape(vec.shape[0], -1)

    def Ut(self, vec):
        return self.u * vec.clone().reshape(vec.shape[0], -1)

    def singulars(self):
        return self.s_small.repeat(self.C * self.k * self.k)

    def add_zeros(self, vec):
        return self._zero_padded(vec, vec.reshape(vec.shape[0], -1).shape[1] * self.r * self.r)


class _Separable(_Generic):
    """Left and right matrix products over each channel's image, reshaping whatever comes in."""

    def _left(self, M, v, dim):
        return torch.matmul(M, v.reshape(v.shape[0] * self.C, dim, dim)).reshape(v.shape[0], self.C, M.shape[0], dim)

    def _right(self, v, M, dim):
        return torch.matmul(v.reshape(v.shape[0] * self.C, dim, dim), M).reshape(v.shape[0], self.C, dim, M.shape[1])


class BicubicStyle(_Separable):
    def __init__(self, op: BicubicSR):
        self.C, self.n, self.r, self.k = op.channels, op.image_size, op.factor, op.small
        self.U_small, self.V_small = op._U_small, op._V_small
        n, k = self.n, self.k
        self.perm = torch.tensor([n * i + j for i in range(k) for j in range(k)]
                                 + [n * i + j for i in range(k) for j in range(k, n)], device=op.device)
        self.s_grid = op._s[:: self.C].clone()       # (k*k,) outer(S, S) before repeat_interleave

    def V(self, vec):
        B, C, n, P = vec.shape[0], self.C, self.n, self.perm.shape[0]
        temp = torch.zeros(B, n * n, C, device=vec.device)
        temp[:, self.perm, :] = vec.clone().reshape(B, n * n, C)[:, :P, :]
        temp[:, P:, :] = vec.clone().reshape(B, n * n, C)[:, P:, :]
        temp = temp.permute(0, 2, 1)
        out = self._left(self.V_small, temp, n)
        return self._right(out, self.V_small.T, n).reshape(B, -1)

    def Vt(self, vec):
        B, n, P = vec.shape[0], self.n, self.perm.shape[0]
        temp = self._left(self.V_small.T, vec.clone(), n)
        temp = self._right(temp, self.V_small, n).reshape(B, self.C, -1)
        temp[:, :, :P] = temp[:, :, self.perm]
        return temp.permute(0, 2, 1).reshape(B, -1)

    def U(self, vec):
        B, C, k = vec.shape[0], self.C, self.k
        temp = torch.zeros(B, k * k, C, device=vec.device)
        temp[:, : k * k, :] = vec.clone().reshape(B, k * k, C)
        temp = temp.permute(0, 2, 1)
        out = self._left(self.U_small, temp, k)
        return self._right(out, self.U_small.T, k).reshape(B, -1)

    def Ut(self, vec):
        B, k = vec.shape[0], self.k
        temp = self._left(self.U_small.T, vec.clone(), k)
        temp = self._right(temp, self.U_small, k).reshape(B, self.C, -1)
        return temp.permute(0, 2, 1).reshape(B, -1)

    def singulars(self):
        return self.s_grid.repeat_interleave(3).reshape(-1)

    def add_zeros(self, vec):
        return self._zero_padded(vec, vec.reshape(vec.shape[0], -1).shape[1] * self.r * self.r)


class DeblurStyle(_Separable):
    """The official `Deblurring` (one kernel) and `Deblurring2D` (rows and columns)."""

    def __init__(self, op: SeparableBlur):
        if op.blur_svd != "reference":
            raise ValueError("the official deblurring pairs singular values as blur_svd='reference' does")
        self.C, self.n = op.channels, op.image_size
        self.Ur, self.Vr, self.Uc, self.Vc = op._Ur, op._Vr, op._Uc, op._Vc
        self.perm = op._perm
        self.s_sorted = op._s[: self.n * self.n].clone()   # sorted 2-D singular values (repeated C times in op._s)

    def _unpermute(self, vec):
        B, n, C = vec.shape[0], self.n, self.C
        temp = torch.zeros(B, n * n, C, device=vec.device)
        temp[:, self.perm, :] = vec.clone().reshape(B, n * n, C)
        return temp.permute(0, 2, 1)

    def _permute(self, temp):
        return temp[:, :, self.perm].permute(0, 2, 1).reshape(temp.shape[0], -1)

    def _from_spectral(self, rows, cols, vec):
        """rows X cols^T of the unpermuted coordinates (the official V and U)."""
        out = self._left(rows, self._unpermute(vec), self.n)
        return self._right(out, cols.T, self.n).reshape(vec.shape[0], -1)

    def _to_spectral(self, rows, cols, vec):
        """rows^T X cols, permuted to the sorted order (the official Vt and Ut)."""
        temp = self._left(rows.T, vec.clone(), self.n)
        return self._permute(self._right(temp, cols, self.n).reshape(vec.shape[0], self.C, -1))

    def V(self, vec):
        return self._from_spectral(self.Vr, self.Vc, vec)

    def Vt(self, vec):
        return self._to_spectral(self.Vr, self.Vc, vec)

    def U(self, vec):
        return self._from_spectral(self.Ur, self.Uc, vec)

    def Ut(self, vec):
        return self._to_spectral(self.Ur, self.Uc, vec)

    def singulars(self):
        return self.s_sorted.repeat(1, 3).reshape(-1)

    def add_zeros(self, vec):
        return vec.clone().reshape(vec.shape[0], -1)


class ColorizationStyle(_Generic):
    def __init__(self, op: Colorization):
        self.C, self.n = op.channels, op.image_size
        self.u = op._u
        self.V_small, self.Vt_small = op._V_small, op._V_small.T
        self.s_small = op._s[:1]

    def _needles(self, M, vec):
        B, C = vec.shape[0], self.C
        needles = vec.clone().reshape(B, C, -1).permute(0, 2, 1)
        needles = torch.matmul(M, needles.reshape(-1, C, 1)).reshape(B, -1, C)
        return needles.permute(0, 2, 1).reshape(B, -1)

    def V(self, vec):
        return self._needles(self.V_small, vec)

    def Vt(self, vec):
        return self._needles(self.Vt_small, vec)

    def U(self, vec):
        return self.u * vec.clone().reshape(vec.shape[0], -1)

    def Ut(self, vec):
        return self.u * vec.clone().reshape(vec.shape[0], -1)

    def singulars(self):
        return self.s_small.repeat(self.n * self.n)


class WalshHadamardStyle(_Generic):
    def __init__(self, op: WalshHadamardCS):
        self.C, self.n = op.channels, op.image_size
        self.perm = op.perm
        self.m = op.num_measurements
        self.s = torch.ones(self.m, device=op.device)

    def fwht(self, vec):
        B, C, hw = vec.shape[0], self.C, self.n * self.n
        a = vec.reshape(B, C, hw)
        h = 1
        while h < hw:
            a = a.reshape(B, C, -1, 2 * h)
            b = a.clone()
            a[:, :, :, :h] = b[:, :, :, :h] + b[:, :, :, h: 2 * h]
            a[:, :, :, h: 2 * h] = b[:, :, :, :h] - b[:, :, :, h: 2 * h]
            h *= 2
        return a.reshape(B, C, hw) / self.n

    def V(self, vec):
        B = vec.shape[0]
        temp = torch.zeros(B, self.C, self.n * self.n, device=vec.device)
        temp[:, :, self.perm] = vec.clone().reshape(B, -1, self.C).permute(0, 2, 1)
        return self.fwht(temp).reshape(B, -1)

    def Vt(self, vec):
        return self.fwht(vec.clone())[:, :, self.perm].permute(0, 2, 1).reshape(vec.shape[0], -1)


class BlockCSStyle(_Generic):
    def __init__(self, op: BlockCS):
        self.C, self.n = op.channels, op.image_size
        self.k = self.n // BLOCK
        self.V_small = op.sensing_matrix
        self.Vt_small = self.V_small.T
        self.mb = op.block_measurements
        self.s_small = torch.ones(self.mb, device=op.device)

    def V(self, vec):
        B, C, k, mb, d = vec.shape[0], self.C, self.k, self.mb, BLOCK * BLOCK
        flat = vec.clone().reshape(B, -1)
        split = C * k * k * mb
        p = torch.zeros(B, C * k * k, d, device=vec.device)
        p[:, :, :mb] = flat[:, :split].contiguous().reshape(B, -1, mb)
        p[:, :, mb:] = flat[:, split:].contiguous().reshape(B, C * k * k, -1)
        p = torch.matmul(self.V_small, p.reshape(-1, d, 1)).reshape(B, C, k, k, BLOCK, BLOCK)
        return p.permute(0, 1, 2, 4, 3, 5).contiguous().reshape(B, C * self.n * self.n)

    def Vt(self, vec):
        B, C, n, mb, d = vec.shape[0], self.C, self.n, self.mb, BLOCK * BLOCK
        p = vec.clone().reshape(B, C, n, n).unfold(2, BLOCK, BLOCK).unfold(3, BLOCK, BLOCK)
        p = p.contiguous().reshape(B, C, -1, d)
        p = torch.matmul(self.Vt_small, p.reshape(-1, d, 1)).reshape(B, C, -1, d)
        out = torch.zeros(B, C * n * n, device=vec.device)
        split = C * self.k * self.k * mb
        out[:, :split] = p[:, :, :, :mb].contiguous().reshape(B, -1)
        out[:, split:] = p[:, :, :, mb:].contiguous().reshape(B, -1)
        return out

    def singulars(self):
        return self.s_small.repeat(self.C * self.k * self.k)


class InpaintingStyle(_Generic):
    def __init__(self, op: Inpainting):
        self.C, self.n = op.channels, op.image_size
        missing_pixels = torch.nonzero(~op.mask.reshape(-1)).reshape(-1) * self.C
        self.missing = torch.cat([missing_pixels + c for c in range(self.C)])
        keep = torch.ones(self.C * self.n * self.n, dtype=torch.bool, device=op.device)
        keep[self.missing] = False
        self.kept = torch.nonzero(keep).reshape(-1)
        self.s = torch.ones(self.kept.shape[0], device=op.device)

    def V(self, vec):
        B, K = vec.shape[0], self.kept.shape[0]
        temp = vec.clone().reshape(B, -1)
        out = torch.zeros_like(temp)
        out[:, self.kept] = temp[:, :K]
        out[:, self.missing] = temp[:, K:]
        return out.reshape(B, -1, self.C).permute(0, 2, 1).reshape(B, -1)

    def Vt(self, vec):
        B, K = vec.shape[0], self.kept.shape[0]
        temp = vec.clone().reshape(B, self.C, -1).permute(0, 2, 1).reshape(B, -1)
        out = torch.zeros_like(temp)
        out[:, :K] = temp[:, self.kept]
        out[:, K:] = temp[:, self.missing]
        return out


class DenoisingStyle(_Generic):
    def __init__(self, op: Denoising):
        self.s = torch.ones(op.N, device=op.device)

    def V(self, vec):
        return vec.clone().reshape(vec.shape[0], -1)

    def Vt(self, vec):
        return vec.clone().reshape(vec.shape[0], -1)

    def add_zeros(self, vec):
        return vec.clone().reshape(vec.shape[0], -1)


_STYLES = [(AveragePoolSR, AveragePoolingStyle), (BicubicSR, BicubicStyle), (SeparableBlur, DeblurStyle),
           (Colorization, ColorizationStyle), (WalshHadamardCS, WalshHadamardStyle), (BlockCS, BlockCSStyle),
           (Inpainting, InpaintingStyle), (Denoising, DenoisingStyle)]


def reference_style(op):
    """The official class's way of computing this operator's A and A^+ (float32, as the official code runs)."""
    if op.dtype != torch.float32:
        raise ValueError(f"the official operators run in float32; this operator is {op.dtype}")
    for cls, style in _STYLES:
        if isinstance(op, cls):
            return style(op)
    raise TypeError(f"no official-style counterpart for {type(op).__name__}")
