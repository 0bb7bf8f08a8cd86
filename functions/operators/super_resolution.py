"""Super-resolution: r x r average pooling, and the reference's strided bicubic filter.

sr_averagepooling (reference `SuperResolution`): y = the r x r mean of each patch,
vectorised as the pooled (C, H/r, W/r) image. Its SVD is per patch: V_small is the
reference's SVD basis of the 1 x r^2 averaging row; spectral coordinates are the
patches' first components (all channels and patches), then the other r^2 - 1
components patch by patch. A, A^T and A^+ are pooling / nearest upsampling.

sr_bicubic (reference `SRConv`, which has no DDNM+ formulas): the 1-D matrix takes
taps j in [i - K/2, i + K/2) around i = r/2 + r*row (the last tap of the 4r-tap
bicubic kernel (a = -0.5) is dropped), with reflective boundary; its singular
values below 3e-2 are zeroed. The 2-D operator is that matrix along rows and along
columns (of size H/r x H down the columns, W/r x W along the rows: any H x W that r
divides); A, A^T and A^+ are two small matrix products per channel.

Reference Lambda_noise for average pooling scales the raw patch pixels where the
SVD formula scales V_small^T times them (see `_reference_noise_coords`).
"""
import numpy as np
import torch
import torch.nn.functional as F

from .base import SVDOperator, _orthonormalise, per_image, reference_svd

TRUNCATE_BELOW = 3e-2  # reference SRConv / Deblurring: singular values below this are zeroed


class AveragePoolSR(SVDOperator):
    """r x r average pooling (reference `SuperResolution`), with the reference's DDNM+ formulas."""

    name = "sr_averagepooling"
    has_reference_lambda = True

    def __init__(self, image_size, channels: int, factor: int, device="cpu", dtype=torch.float32,
                 lambda_mode: str = "reference"):
        super().__init__(image_size, channels, device, dtype, lambda_mode)
        self.factor = r = int(factor)
        _check_factor(self.name, r, self.height, self.width)
        self.small_h, self.small_w = self.height // r, self.width // r
        self.small = _side_or_shape(self.small_h, self.small_w)
        U, S, V = reference_svd(torch.full((1, r * r), 1.0 / r ** 2), dtype)
        if dtype == torch.float64:
            # the exact factors, so that U s V^T is avg_pool to double precision: the pooling row's
            # singular vector is the constant 1/r (sign kept), its singular value 1/r, and the rest
            # of V re-orthonormalised against it (the float32 SVD gives 0.5000000447 for r = 2)
            V = V.clone()
            V[:, 0] = torch.sign(V[0, 0]) / r
            V = _orthonormalise(V)
            S = torch.full_like(S, 1.0 / r)
        self._u = float(U[0, 0])
        self._V_small = self._t(V)
        self._s = self._t(S[:1]).repeat(channels * self.small_h * self.small_w)

    def singulars(self):
        return self._s

    def _patches(self, x):
        B, C, r, kh, kw = x.shape[0], self.channels, self.factor, self.small_h, self.small_w
        return x.reshape(B, C, kh, r, kw, r).permute(0, 1, 2, 4, 3, 5).reshape(B, C * kh * kw, r * r)

    def _unpatch(self, p):
        B, C, r, kh, kw = p.shape[0], self.channels, self.factor, self.small_h, self.small_w
        return p.reshape(B, C, kh, kw, r, r).permute(0, 1, 2, 4, 3, 5).reshape(B, C, self.height, self.width)

    @staticmethod
    def _order(p):
        """Per-patch components (B, P, r^2) -> spectral vector: all first components, then the rest."""
        return torch.cat([p[:, :, 0], p[:, :, 1:].reshape(p.shape[0], -1)], dim=1)

    def _unorder(self, v):
        v = self._flat(v)
        B, P = v.shape[0], self.channels * self.small_h * self.small_w
        return torch.cat([v[:, :P, None], v[:, P:].reshape(B, P, -1)], dim=2)

    def Vt(self, x):
        return self._order(self._patches(self._image(x)) @ self._V_small)

    def V(self, v):
        return self._unpatch(self._unorder(v) @ self._V_small.T)

    def U(self, y):
        return self._u * self._flat(y)

    def Ut(self, y):
        return self._u * self._flat(y)

    def A(self, x):
        x = self._image(x)
        return F.avg_pool2d(x, self.factor).reshape(x.shape[0], -1)

    def _upsample(self, y):
        """Nearest upsampling by r: each pixel repeated r times along the row (a broadcast
        view copied once), then each row r times. Two copies with long inner runs are
        2x faster on a CPU than one copy of a (k, r, k, r) view, whose inner runs are r long."""
        B, C, kh, kw, r = y.shape[0], self.channels, self.small_h, self.small_w, self.factor
        rows = self._flat(y).reshape(B, C, kh, kw, 1).expand(B, C, kh, kw, r).reshape(B, C, kh, 1, kw * r)
        return rows.expand(B, C, kh, r, kw * r).reshape(B, C, kh * r, kw * r)

    def At(self, y):
        return self._upsample(y) / self.factor ** 2

    def A_pinv(self, y):
        return self._upsample(y)

    def _reference_noise_coords(self, x):
        return self._order(self._patches(self._image(x)))


def _check_factor(name: str, factor: int, height: int, width: int) -> None:
    if factor < 1 or height % factor or width % factor:
        raise ValueError(f"{name}: factor {factor} must divide both sides of the {height}x{width} image")


def _side_or_shape(h: int, w: int):
    """The int side of a square (low-resolution) image, else (h, w), as `image_size`."""
    return h if h == w else (h, w)


def bicubic_kernel(factor: int, a: float = -0.5) -> torch.Tensor:
    """The reference's 4*factor-tap bicubic kernel (float64 weights, normalised, then float32)."""
    def cubic(t):
        t = abs(t)
        if t <= 1:
            return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
        if t < 2:
            return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
        return 0.0

    taps = 4 * factor
    k = np.array([cubic((1 / factor) * (i - np.floor(taps / 2) + 0.5)) for i in range(taps)])
    k = torch.from_numpy(k / k.sum()).float()
    return k / k.sum()


def strided_conv_matrix(kernel: torch.Tensor, size: int, stride: int) -> torch.Tensor:
    """(size/stride, size) matrix of the reference `SRConv`: taps [i - K/2, i + K/2), reflective boundary."""
    K = kernel.shape[0]
    centres = np.arange(stride // 2, size + stride // 2, stride)
    offsets = np.arange(-(K // 2), K // 2)
    j = centres[:, None] + offsets[None, :]
    j_eff = np.where(j < 0, -j - 1, j)
    j_eff = np.where(j_eff >= size, (size - 1) - (j_eff - size), j_eff)
    if j_eff.min() < 0 or j_eff.max() >= size:
        raise ValueError(f"sr_bicubic: factor {stride} is too large for an image side of {size} pixels "
                         f"(the {K}-tap kernel reflects past both borders)")
    rows = np.broadcast_to((centres // stride)[:, None], j.shape)
    M = np.zeros((size // stride, size), dtype=np.float64)
    taps = np.broadcast_to(kernel.double().numpy()[offsets + K // 2][None, :], j.shape)
    np.add.at(M, (rows.ravel(), j_eff.ravel()), taps.ravel())      # reflected taps add up
    return torch.from_numpy(M).float()


class BicubicSR(SVDOperator):
    """Separable strided bicubic filter (reference `SRConv`); no reference DDNM+ formulas."""

    name = "sr_bicubic"

    def __init__(self, image_size, channels: int, factor: int, device="cpu", dtype=torch.float32,
                 lambda_mode: str = "reference", kernel: torch.Tensor = None):
        super().__init__(image_size, channels, device, dtype, lambda_mode)
        self.factor = r = int(factor)
        _check_factor(self.name, r, self.height, self.width)
        H, W = self.height, self.width
        self.small_h, self.small_w = kh, kw = H // r, W // r
        self.small = _side_or_shape(kh, kw)
        self.kernel = bicubic_kernel(r) if kernel is None else kernel.detach().float().cpu()
        # one 1-D factorisation per side: rows (kh, H) act down the columns, columns (kw, W) along rows
        rows = self._side(H, dtype)
        Ur, Sr, Vr, A1r, A1r_pinv = rows
        Uc, Sc, Vc, A1c, A1c_pinv = rows if W == H else self._side(W, dtype)
        self._Ur, self._Vr, self._A1r, self._A1r_pinv = Ur, Vr, A1r, A1r_pinv
        self._Uc, self._Vc, self._A1c, self._A1c_pinv = Uc, Vc, A1c, A1c_pinv
        if H == W:      # the one pair of factors of a square operator (benchmarks/reference_operators.py)
            self._U_small, self._V_small = Ur, Vr
        self._s = self._t(torch.outer(Sr, Sc).reshape(-1)).repeat_interleave(channels)

    def _side(self, n: int, dtype):
        """(U, S, V, A1, A1^+) of the 1-D strided filter on a side of length n, S truncated."""
        r, k = self.factor, n // self.factor
        U, S, V = reference_svd(strided_conv_matrix(self.kernel, n, r), dtype)
        S = S.clone()
        S[S < TRUNCATE_BELOW] = 0
        S_pinv = torch.where(S > 0, 1 / torch.where(S > 0, S, torch.ones_like(S)), torch.zeros_like(S))
        A1 = self._t(U @ torch.diag(S) @ V[:, :k].T)            # truncated (k, n)
        A1_pinv = self._t(V[:, :k] @ torch.diag(S_pinv) @ U.T)   # (n, k)
        return self._t(U), S, self._t(V), A1, A1_pinv

    def singulars(self):
        return self._s

    @per_image
    def Vt(self, x):
        x = self._image(x)
        B, C, kh, kw = x.shape[0], self.channels, self.small_h, self.small_w
        T = self._Vr.T @ x @ self._Vc
        parts = [T[:, :, :kh, :kw].reshape(B, C, -1), T[:, :, :kh, kw:].reshape(B, C, -1),
                 T[:, :, kh:, :].reshape(B, C, -1)]
        return torch.cat(parts, dim=2).permute(0, 2, 1).reshape(B, -1)

    @per_image
    def V(self, v):
        v = self._flat(v)
        B, C, H, W, kh, kw = v.shape[0], self.channels, self.height, self.width, self.small_h, self.small_w
        t = v.reshape(B, H * W, C).permute(0, 2, 1)
        T = torch.empty(B, C, H, W, dtype=v.dtype, device=v.device)
        T[:, :, :kh, :kw] = t[:, :, : kh * kw].reshape(B, C, kh, kw)
        T[:, :, :kh, kw:] = t[:, :, kh * kw: kh * W].reshape(B, C, kh, W - kw)
        T[:, :, kh:, :] = t[:, :, kh * W:].reshape(B, C, H - kh, W)
        return self._Vr @ T @ self._Vc.T

    def _small_image(self, y):
        return self._flat(y).reshape(-1, self.channels, self.small_h, self.small_w)

    @per_image
    def U(self, y):
        B, C, kh, kw = y.shape[0], self.channels, self.small_h, self.small_w
        t = self._flat(y).reshape(B, kh * kw, C).permute(0, 2, 1).reshape(B, C, kh, kw)
        return (self._Ur @ t @ self._Uc.T).reshape(B, -1)

    @per_image
    def Ut(self, y):
        B, C = y.shape[0], self.channels
        t = self._Ur.T @ self._small_image(y) @ self._Uc
        return t.reshape(B, C, -1).permute(0, 2, 1).reshape(B, -1)

    @per_image
    def A(self, x):
        x = self._image(x)
        return (self._A1r @ x @ self._A1c.T).reshape(x.shape[0], -1)

    @per_image
    def At(self, y):
        return self._A1r.T @ self._small_image(y) @ self._A1c

    @per_image
    def A_pinv(self, y):
        return self._A1r_pinv @ self._small_image(y) @ self._A1c_pinv.T
