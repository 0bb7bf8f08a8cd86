"""Compressed sensing: Walsh-Hadamard (cs_walshhadamard) and block-based (cs_blockbased).

Both have orthonormal rows (all singular values 1), so A^+ = A^T.

cs_walshhadamard (reference `WalshHadamardCS`): per channel, the orthonormal
Walsh-Hadamard transform of the flattened image (natural / Sylvester order, scaled
by 1 / image side), coefficients permuted by `perm`, then interleaved over channels
(index p*C + c) and the first m kept, m = round(ratio * C * H * W) (the reference
keeps C*H*W // round(1 / ratio): the same for ratios 1/k). The natural-order
Hadamard matrix of size 2^k is a Kronecker product of 16 x 16 ones, so the
transform is a few 16 x 16 matrix products (O(N log N)). Needs n a power of two.
Reference Lambda_noise skips the transform (`_reference_noise_coords`).

cs_blockbased (reference `CS`; no DDNM+ formulas there): per channel and per 32 x 32
block, y = the first m_b = int(1024 * ratio) rows of V_small^T applied to the block
vector, V_small a 1024 x 1024 orthogonal matrix. This is where A^+ for block CS is:
A^+ y = V_small[:, :m_b] y per block, one batched matrix product (the reference goes
through the full V and V^T). The reference draws V_small from torch.svd of an
unseeded randn (a Haar-random orthogonal matrix); here it is the Q factor of a
seeded Gaussian matrix (also Haar), or an injected one, saved with `state_dict()`.
Only its first m_b columns are formed at construction (a 1024 x m_b QR); the rest,
which only Vt / V / Lambda need, on first use.
"""
import numpy as np
import torch

from .base import SVDOperator, interleaved_index, inverse_index, per_image, single_thread

BLOCK = 32


def sylvester_hadamard(n: int) -> torch.Tensor:
    """n x n Hadamard matrix in natural (Sylvester) order, entries +-1; n a power of two."""
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H


def hadamard_factors(length: int):
    """Sizes (powers of two, 16 where possible) whose product is `length` (a power of two)."""
    sizes = []
    while length > 1:
        f = min(16, length)
        sizes.append(f)
        length //= f
    return sizes


def gaussian_columns(rng: np.random.Generator, count: int, size: int) -> torch.Tensor:
    """The next `count` standard-normal columns of length `size` from a NumPy generator (float64).

    NumPy's generator is a plain stream, so drawing columns in two calls gives the
    same matrix as drawing them at once: V_small depends on the seed only.
    """
    return torch.from_numpy(rng.standard_normal((count, size)).T.copy())


def orthonormal_columns(G: torch.Tensor, against: torch.Tensor = None) -> torch.Tensor:
    """Q of G = QR with R's diagonal positive, after removing the span of `against` (orthonormal) first.

    Column by column this is Gram-Schmidt, so orthonormal_columns(G[:, :m]) and then
    orthonormal_columns(G[:, m:], against=that) together are the Q of the whole G:
    for a Gaussian G, a Haar-random orthogonal matrix.
    """
    with single_thread():
        if against is not None:
            G = G - against @ (against.T @ G)
        q, r = torch.linalg.qr(G)
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1
    return q * signs


def random_orthogonal(size: int, seed: int) -> torch.Tensor:
    """Haar-distributed orthogonal matrix: the Q of a seeded Gaussian matrix (float64)."""
    return orthonormal_columns(gaussian_columns(np.random.default_rng(int(seed)), size, size))


def random_permutation(n: int, seed: int) -> torch.Tensor:
    """The measured Walsh-Hadamard coefficients' order: numpy's PCG64 from (seed, a tag), a
    stream apart from the torch generators that draw each image's x_T and noise."""
    return torch.from_numpy(np.random.default_rng([int(seed), 0x7065726D]).permutation(n))


class WalshHadamardCS(SVDOperator):
    name = "cs_walshhadamard"
    has_reference_lambda = True

    def __init__(self, image_size: int, channels: int, ratio: float, device="cpu", dtype=torch.float32,
                 lambda_mode: str = "reference", perm: torch.Tensor = None, seed: int = 0):
        n = int(image_size)
        if n < 1 or n & (n - 1):
            raise ValueError(f"cs_walshhadamard needs image_size a power of two (e.g. 64, 128, 256), got {n}")
        super().__init__(image_size, channels, device, dtype, lambda_mode)
        self.ratio = float(ratio)
        self._m = max(1, int(round(self.ratio * channels * n * n)))
        # H_{n^2} (natural order) = H_f1 (x) H_f2 (x) ...: one small matmul per factor
        self._factors = {f: self._t(sylvester_hadamard(f) / f ** 0.5) for f in set(hadamard_factors(n * n))}
        self._factor_sizes = hadamard_factors(n * n)
        self._s = torch.ones(self._m, device=self.device, dtype=dtype)
        self._set_perm(random_permutation(n * n, seed) if perm is None else perm)

    def _set_perm(self, perm):
        perm = torch.as_tensor(perm).long().reshape(-1).cpu()
        HW = self.image_size ** 2
        if perm.numel() != HW or not torch.equal(perm.sort().values, torch.arange(HW)):
            raise ValueError(f"cs_walshhadamard perm must be a permutation of range({HW}), "
                             f"got shape {tuple(perm.shape)}")
        self.perm = perm.to(self.device)
        self._idx = interleaved_index(self.perm, self.channels, HW)
        self._inv = inverse_index(self._idx)
        self._idx_m = self._idx[: self._m].contiguous()
        n = self.image_size
        unmeasured = torch.ones(self.N, device=self.device, dtype=self.dtype)
        unmeasured[self._idx_m] = 0
        self._unmeasured = unmeasured.reshape(self.channels, n, n)

    def singulars(self):
        return self._s

    def fwht(self, x):
        """Orthonormal Walsh-Hadamard transform of each channel's flattened image (its own inverse).

        The flat index is split into digits of the factor sizes (most significant
        first); H_f is applied to each digit in place, as a matrix product over a
        (before, f, after) view, so no step transposes or copies the data.
        """
        shape = x.shape
        n = shape[-1] * shape[-2]
        t = x.reshape(-1, n)
        rows = t.shape[0]
        before, after = rows, n
        for f in self._factor_sizes:
            after //= f
            H = self._factors[f]
            if after == 1:      # the last digit: a plain product on the right (H is symmetric)
                t = (t.reshape(-1, f) @ H).reshape(rows, n)
            else:
                t = torch.matmul(H, t.reshape(before, f, after)).reshape(rows, n)
            before *= f
        return t.reshape(shape)

    def _order(self, T):
        return T.reshape(T.shape[0], -1).index_select(1, self._idx)

    def _unorder(self, v):
        v = self._flat(v)
        n = self.image_size
        return v.index_select(1, self._inv).reshape(v.shape[0], self.channels, n, n)

    def Vt(self, x):
        return self._order(self.fwht(self._image(x)))

    def V(self, v):
        return self.fwht(self._unorder(v))

    def A(self, x):
        T = self.fwht(self._image(x))
        return T.reshape(T.shape[0], -1).index_select(1, self._idx_m)

    def At(self, y):
        y = self._flat(y)
        n = self.image_size
        flat = y.new_zeros(y.shape[0], self.N).index_copy_(1, self._idx_m, y)
        return self.fwht(flat.reshape(y.shape[0], self.channels, n, n))

    def A_pinv(self, y):
        return self.At(y)

    def null_space(self, x):
        """fwht(unmeasured * fwht(x)): the transform is its own inverse, so no gather or scatter."""
        return self.fwht(self.fwht(self._image(x)) * self._unmeasured)

    def _reference_noise_coords(self, x):
        return self._order(self._image(x))

    def state_dict(self):
        return {"perm": self.perm.cpu()}

    def load_state_dict(self, state):
        if set(state) != {"perm"}:
            raise ValueError(f"cs_walshhadamard state must hold exactly 'perm', got keys {sorted(state)}")
        self._set_perm(state["perm"])


class BlockCS(SVDOperator):
    name = "cs_blockbased"

    def __init__(self, image_size: int, channels: int, ratio: float, device="cpu", dtype=torch.float32,
                 lambda_mode: str = "reference", sensing_matrix: torch.Tensor = None, seed: int = 0):
        n = int(image_size)
        if n % BLOCK:
            raise ValueError(f"cs_blockbased needs image_size a multiple of {BLOCK}, got {n}")
        super().__init__(image_size, channels, device, dtype, lambda_mode)
        self.ratio = float(ratio)
        self.block_measurements = mb = max(1, int(BLOCK * BLOCK * self.ratio))
        self.blocks = (n // BLOCK) ** 2
        self._s = torch.ones(channels * self.blocks * mb, device=self.device, dtype=dtype)
        if sensing_matrix is not None:
            self._set_matrix(sensing_matrix)
        else:
            # A and A^+ need only the first m_b columns of V_small; the others (for Vt, V,
            # Lambda) are completed from the same Gaussian matrix on first use.
            self._rng = np.random.default_rng(int(seed))
            self._master = None
            self._rows_master = orthonormal_columns(gaussian_columns(self._rng, mb, BLOCK * BLOCK))
            self._rows = self._t(self._rows_master)

    def _set_matrix(self, M):
        M = torch.as_tensor(M)
        d = BLOCK * BLOCK
        if tuple(M.shape) != (d, d):
            raise ValueError(f"cs_blockbased sensing matrix must be ({d}, {d}) orthogonal, got {tuple(M.shape)}")
        self._rng = None
        self._master = M.detach().cpu()              # as drawn / injected
        self._full = self._t(M)
        self._rows = self._full[:, : self.block_measurements].contiguous()   # A_block^T

    @property
    def sensing_matrix(self) -> torch.Tensor:
        """V_small (1024, 1024): its columns are the block basis, the first m_b measured."""
        if self._master is None:
            d = BLOCK * BLOCK
            rest = orthonormal_columns(gaussian_columns(self._rng, d - self.block_measurements, d),
                                       against=self._rows_master)
            self._set_matrix(torch.cat([self._rows_master, rest], dim=1))
        return self._full

    def singulars(self):
        return self._s

    def _blocks(self, x):
        x = self._image(x)
        B, C, k = x.shape[0], self.channels, self.image_size // BLOCK
        return x.reshape(B, C, k, BLOCK, k, BLOCK).permute(0, 1, 2, 4, 3, 5).reshape(B, C, k * k, BLOCK * BLOCK)

    def _unblock(self, p):
        B, C, n, k = p.shape[0], self.channels, self.image_size, self.image_size // BLOCK
        return p.reshape(B, C, k, k, BLOCK, BLOCK).permute(0, 1, 2, 4, 3, 5).reshape(B, C, n, n)

    @per_image
    def Vt(self, x):
        c = self._blocks(x) @ self.sensing_matrix
        B, mb = c.shape[0], self.block_measurements
        return torch.cat([c[..., :mb].reshape(B, -1), c[..., mb:].reshape(B, -1)], dim=1)

    @per_image
    def V(self, v):
        v = self._flat(v)
        B, C, P, mb = v.shape[0], self.channels, self.blocks, self.block_measurements
        split = C * P * mb
        c = torch.cat([v[:, :split].reshape(B, C, P, mb), v[:, split:].reshape(B, C, P, -1)], dim=3)
        return self._unblock(c @ self.sensing_matrix.T)

    @per_image
    def A(self, x):
        y = self._blocks(x) @ self._rows
        return y.reshape(y.shape[0], -1)

    @per_image
    def At(self, y):
        y = self._flat(y)
        return self._unblock(y.reshape(y.shape[0], self.channels, self.blocks, -1) @ self._rows.T)

    @per_image
    def A_pinv(self, y):
        return self.At(y)

    def state_dict(self):
        self.sensing_matrix                          # complete the basis if it is still partial
        return {"sensing_matrix": self._master}

    def load_state_dict(self, state):
        if set(state) != {"sensing_matrix"}:
            raise ValueError(f"cs_blockbased state must hold exactly 'sensing_matrix', got keys {sorted(state)}")
        self._set_matrix(state["sensing_matrix"])
