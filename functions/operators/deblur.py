"""Separable deblurring: deblur_uni, deblur_gauss, deblur_aniso (reference `Deblurring`, `Deblurring2D`).

The reference's 1-D matrix takes taps j in [i - K/2, i + K/2) with zero boundary,
so the last tap of every kernel is dropped (5 taps act as 4, 9 as 8); singular
values of the 1-D matrix below 3e-2 are zeroed; the 2-D blur is A_rows X A_cols^T
per channel, with singular values s_rows[i] s_cols[j], sorted in decreasing order
(torch's CPU sort; ties -- s_i s_j = s_j s_i -- in its order).

Reference defects, reproduced by default and documented here (see
tests/test_operators.py for the evidence):

1. The singular values are not matched to their singular vectors. Spectral
   coordinates are laid out pixel-major with channels interleaved (index p*C + c
   for sorted position p), but `singulars()` is `sorted.repeat(1, 3)`, i.e. channel-
   major: coordinate p*C + c gets the singular value sorted[(p*C + c) mod HW]
   instead of sorted[p]. The reference's A, A^T and A^+ (and so its y, DDNM and
   DDRM) use these: its "blur" is not the blur. `blur_svd="matched"` gives the true
   (truncated) blur instead. The fixtures and the published numbers use the former.
2. DDNM+ (deblur_uni / deblur_gauss only): Lambda and Lambda_noise use the
   *matched, untruncated* singular values, per pixel position, while A^+ divides by
   the mismatched, truncated ones of (1). So Lambda's noise-aware scaling is
   computed for singular values that A^+ does not use: on a coordinate where A^+
   divides by a small mismatched s' but Lambda assumes a larger s, the noise in y
   (sigma_y / s') is not damped, and on truncated coordinates (A^+ = 0 there, so
   nothing of y arrives) Lambda_noise still treats s as nonzero and drops the
   sqrt(1 - eta^2) sigma_t share of the noise (d2 = 0 everywhere, since no
   untruncated s is exactly 0), leaving those coordinates under-noised.
3. Lambda_noise scales the pixel-permuted input instead of its V^T coordinates
   (no rotation), as in every reference Lambda_noise with a rotation.
This is why the reference's DDNM+ on noisy deblur_gauss fails (fixtures README:
MSE 1.02 against DDRM's 0.26; the public report of PSNR < 10). lambda_mode="svd"
uses this operator's own singular values throughout, which removes 2 and 3.

Any H x W: the rows matrix (H x H) acts down the columns, the columns matrix
(W x W) along the rows; a square image with one kernel shares one factorisation.

The separable form makes A, A^T, A^+: U_r (G * (V_r^T X V_c)) U_c^T with G the
(C, H, W) grid of each coordinate's singular value, two small matrix products per
side. No (CHW)^2 matrix anywhere.

DDNM's projection null_space(x) = V_r (N * (V_r^T X V_c)) V_c^T, with N the grid's
zeros, needs only the coordinates where N is 1: 11-25% of the grid at 256, lying in
bands of the product s_r[i] s_c[j]. On a CPU, where the four full products are the
whole cost, `NullBlocks` computes V_r^T X once for the rows that hold null
coordinates, then, per block of such rows, only the columns that block needs.
"""
import torch

from .base import SVDOperator, interleaved_index, inverse_index, per_image, reference_svd

TRUNCATE_BELOW = 3e-2
BLUR_SVD_MODES = ("reference", "matched")
NULL_BLOCK_HEIGHTS = (8, 16, 32, 64)
# the cost of one extra tensor operation, in multiply-adds, for choosing the block height
# (about 10 us on a CPU core that does ~40 G multiply-adds per second)
OP_OVERHEAD_MACS = 4e5


def gaussian_kernel(sigma: float, radius: int) -> torch.Tensor:
    """The reference's float32 Gaussian taps exp(-x^2 / (2 sigma^2)), x = -radius..radius, normalised."""
    k = torch.Tensor([float(torch.exp(torch.Tensor([-0.5 * (x / sigma) ** 2]))) for x in range(-radius, radius + 1)])
    return k / k.sum()


def uniform_kernel(taps: int = 9) -> torch.Tensor:
    return torch.Tensor([1 / taps] * taps)


def conv_matrix(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """(size, size) matrix of the reference `Deblurring`: taps [i - K/2, i + K/2), zero boundary."""
    K = kernel.shape[0]
    i = torch.arange(size)[:, None]
    offsets = torch.arange(-(K // 2), K // 2)[None, :]
    j = i + offsets
    valid = (j >= 0) & (j < size)
    M = torch.zeros(size, size, dtype=torch.float32)
    rows = i.expand_as(j)[valid]
    M[rows, j[valid]] = kernel.float()[(offsets + K // 2).expand_as(j)[valid]]
    return M


class NullBlocks:
    """null_space(x) = V_r (N * (V_r^T X V_c)) V_c^T computed on the rows and columns where N is 1.

    N (C, H, W) is 1 on the null coordinates. Rows of the spectral grid without any are
    skipped; the others are cut into blocks of `height` rows, and each block multiplies
    by the columns of V_c that its rows need (the union over its rows and the channels),
    with N's entries there as its mask. Each image is laid out rows-first, (H, C, W), so
    that every product is one matrix product over its channels.

    Exactly the dense formula, up to float rounding; `plan` returns None where the
    blocks would not save work (small images, or null coordinates everywhere)."""

    def __init__(self, Vr, Vc, null_grid, height):
        rows_used = null_grid.bool().any(0)                     # (H, W): any channel null there
        rows = rows_used.any(1).nonzero().flatten()
        self.Vr_rows = Vr[:, rows].contiguous()                 # (H, R)
        self.Vr_rows_t = self.Vr_rows.T.contiguous()            # (R, H)
        self.blocks = []
        for k in range(0, rows.numel(), height):
            block_rows = rows[k:k + height]
            cols = rows_used[block_rows].any(0).nonzero().flatten()
            Vc_cols = Vc[:, cols].contiguous()                  # (W, w)
            mask = null_grid[:, block_rows][:, :, cols].permute(1, 0, 2).contiguous()   # (h, C, w)
            self.blocks.append((k, k + block_rows.numel(), Vc_cols, Vc_cols.T.contiguous(), mask))

    @staticmethod
    def macs(null_grid, height):
        """Multiply-adds per image and channel (with the per-operation overhead) of this plan, and of the dense one."""
        used = null_grid.bool().any(0)
        H, W = used.shape
        rows = used.any(1).nonzero().flatten()
        blocked = 2 * rows.numel() * H * W + 3 * OP_OVERHEAD_MACS
        for k in range(0, rows.numel(), height):
            width = int(used[rows[k:k + height]].any(0).sum())
            blocked += 2 * rows[k:k + height].numel() * W * width + 3 * OP_OVERHEAD_MACS
        return blocked, 2 * H * W * (H + W) + 4 * OP_OVERHEAD_MACS

    @classmethod
    def plan(cls, Vr, Vc, null_grid):
        """The cheapest block height by `macs`, or None when the dense products are cheaper or
        there are no null coordinates (small images where nothing is truncated)."""
        if not bool(null_grid.any()):
            return None
        costs = {h: cls.macs(null_grid, h) for h in NULL_BLOCK_HEIGHTS}
        height = min(costs, key=lambda h: costs[h][0])
        blocked, dense = costs[height]
        return cls(Vr, Vc, null_grid, height) if blocked < 0.9 * dense else None

    @per_image
    def __call__(self, X):
        # image by image (per_image): the products' shapes then do not depend on the batch, nor does the rounding
        if X.shape[0] == 0:
            return torch.empty_like(X)
        return self._one(X[0]).contiguous()[None]

    def _one(self, image):
        C, H, W = image.shape
        P = (self.Vr_rows_t @ image.transpose(0, 1).reshape(H, -1)).view(-1, C, W)   # (R, C, W)
        Q = torch.empty_like(P)
        for r0, r1, Vc_cols, Vc_cols_t, mask in self.blocks:
            Y = (P[r0:r1].reshape(-1, W) @ Vc_cols).view(r1 - r0, C, -1).mul_(mask)
            torch.matmul(Y.view(-1, Y.shape[-1]), Vc_cols_t, out=Q[r0:r1].view(-1, W))
        return (self.Vr_rows @ Q.view(Q.shape[0], -1)).view(H, C, W).transpose(0, 1)


class SeparableBlur(SVDOperator):
    """A_rows X A_cols^T per channel with the reference's truncation and singular-value order.

    svd_factors: ((U, S, V) of the rows matrix, (U, S, V) of the columns matrix), as
    `reference_svd` returns them, to inject the 1-D factors instead of computing
    them. The reference operator depends on LAPACK's choice of basis inside
    near-degenerate singular pairs (deblur_gauss at 64: 0.2146205 / 0.2146194), which
    float32 fixes only to ~eps / gap; injecting factors reproduces another machine's.
    """

    def __init__(self, name: str, kernel_rows: torch.Tensor, kernel_cols: torch.Tensor, image_size,
                 channels: int, device="cpu", dtype=torch.float32, lambda_mode: str = "reference",
                 blur_svd: str = "reference", reference_lambda: bool = False, svd_factors=None,
                 null_blocks=None):
        super().__init__(image_size, channels, device, dtype, lambda_mode)
        if blur_svd not in BLUR_SVD_MODES:
            raise ValueError(f"blur_svd must be one of {BLUR_SVD_MODES}, got {blur_svd!r}")
        self.name = name
        self.blur_svd = blur_svd
        self.has_reference_lambda = reference_lambda
        H, W, C = self.height, self.width, channels
        self.kernel_rows = kernel_rows.detach().float().cpu()
        self.kernel_cols = kernel_cols.detach().float().cpu()
        if svd_factors is None:
            Ur, Sr, Vr = reference_svd(conv_matrix(self.kernel_rows, H), dtype)
            same = H == W and torch.equal(self.kernel_rows, self.kernel_cols)
            Uc, Sc, Vc = (Ur, Sr, Vr) if same else reference_svd(conv_matrix(self.kernel_cols, W), dtype)
        else:
            (Ur, Sr, Vr), (Uc, Sc, Vc) = svd_factors
        self._Ur, self._Vr, self._Uc, self._Vc = (self._t(M) for M in (Ur, Vr, Uc, Vc))

        # 2-D singular values in float32 as the reference forms and sorts them
        sr_orig, sc_orig = Sr.float(), Sc.float()
        sr, sc = sr_orig.clone(), sc_orig.clone()
        sr[sr < TRUNCATE_BELOW] = 0
        sc[sc < TRUNCATE_BELOW] = 0
        sorted_s, perm = (sr[:, None] * sc[None, :]).reshape(-1).sort(descending=True)
        self._perm = perm.to(self.device)
        self._idx = interleaved_index(self._perm, C, H * W)
        self._inv = inverse_index(self._idx)
        if blur_svd == "reference":
            s = sorted_s.repeat(C)                       # coordinate q gets sorted[q mod HW]
        else:
            s = sorted_s.repeat_interleave(C)            # coordinate p*C + c gets sorted[p]
        self._s = self._t(s)
        # the same singular values on the (C, H, W) grid of V_r^T X V_c (float32 holds them exactly)
        grid = torch.empty(C, H * W, dtype=torch.float32)
        grid[:, perm] = s.reshape(H * W, C).T
        self._grid = self._t(grid.reshape(C, H, W))
        self._grid_pinv = torch.where(self._grid > 0, self._grid.reciprocal(), torch.zeros_like(self._grid))
        self._null_grid = (self._grid == 0).to(self._grid.dtype)     # A^+ A = V diag(G > 0) V^T
        # blocks pay on a CPU, where the products are the cost; a GPU does the four full
        # products in a few launches (None: decide by device)
        if null_blocks is None:
            null_blocks = self.device.type == "cpu"
        self._null_blocks = NullBlocks.plan(self._Vr, self._Vc, self._null_grid) if null_blocks else None
        # what the reference's Lambda / Lambda_noise use: matched, untruncated, per pixel position
        orig = (sr_orig[:, None] * sc_orig[None, :]).reshape(-1)[perm]
        self._s_lambda_ref = self._t(orig.repeat_interleave(C))

    def singulars(self):
        return self._s

    # spectral coordinates: (B, C, H, W) grid <-> sorted, pixel-major, channels interleaved
    def _to_vec(self, T):
        return T.reshape(T.shape[0], -1).index_select(1, self._idx)

    def _to_grid(self, v):
        v = self._flat(v)
        return v.index_select(1, self._inv).reshape(v.shape[0], *self.image_shape)

    @per_image
    def Vt(self, x):
        return self._to_vec(self._Vr.T @ self._image(x) @ self._Vc)

    @per_image
    def V(self, v):
        return self._Vr @ self._to_grid(v) @ self._Vc.T

    @per_image
    def Ut(self, y):
        return self._to_vec(self._Ur.T @ self._image(y) @ self._Uc)

    @per_image
    def U(self, y):
        return (self._Ur @ self._to_grid(y) @ self._Uc.T).reshape(y.shape[0], -1)

    @per_image
    def A(self, x):
        x = self._image(x)
        return (self._Ur @ (self._grid * (self._Vr.T @ x @ self._Vc)) @ self._Uc.T).reshape(x.shape[0], -1)

    @per_image
    def At(self, y):
        return self._Vr @ (self._grid * (self._Ur.T @ self._image(y) @ self._Uc)) @ self._Vc.T

    @per_image
    def A_pinv(self, y):
        return self._Vr @ (self._grid_pinv * (self._Ur.T @ self._image(y) @ self._Uc)) @ self._Vc.T

    @per_image
    def null_space(self, x):
        """V ((G == 0) * V^T x): four matrix products instead of A's four and A^+'s four, on a CPU
        only over the rows and columns that hold null coordinates (`NullBlocks`)."""
        X = self._image(x)
        if self._null_blocks is not None:
            return self._null_blocks(X)
        return self._Vr @ (self._null_grid * (self._Vr.T @ X @ self._Vc)) @ self._Vc.T

    def _reference_lambda_singulars(self):
        return self._s_lambda_ref

    def _reference_noise_coords(self, x):
        return self._to_vec(self._image(x))
