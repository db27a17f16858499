"""Batched L2-regularised linear classifiers in torch: many problems share one matrix product.

Private to :mod:`classifiers.linear`, which imports it inside ``fit`` only (``import
classifiers`` never imports torch).

A *batch* is ``B`` problems on the same rows ``X`` (n, D) that differ only in their row weights
(a CV fold is a problem whose held-out rows weigh 0) and their regularisation. Every problem has
``K`` outputs, so all of them are one parameter matrix ``P`` of shape ``(r + 1, B * K)`` (the last
row holds the intercepts), and the logits of every row under every problem are one GEMM. Held-out
rows get their logits from the same product, so CV predictions are free.

Problem ``b`` minimises, over weights ``W_b`` (D, K) and intercepts ``c_b`` (K,),

    f_b = (1 / m_b) * sum_i w_bi * loss(x_i W_b + c_b, y_i) + (lam_b / 2) * |W_b|^2

with ``m_b = sum_i w_bi`` and ``lam_b = 1 / (C_b * m_b)``: the same minimiser as scikit-learn's
``C * sum_i w_i * loss_i + |W|^2 / 2`` (``LogisticRegression``; ``LinearSVC`` up to its
penalised intercept, which is not penalised here). Losses: ``"log_loss"`` (multinomial, softmax
over the K outputs) and ``"squared_hinge"`` (one-vs-rest: K independent binary problems,
``max(0, 1 - t_ik * z_ik)^2`` with ``t_ik = +1`` for the row's class, else -1).

Coordinates (:class:`Basis`). The rows are centred (the free intercept absorbs the shift) and the
weights are solved for in the eigenbasis of the rows' covariance. The penalty is isotropic, so
rotating is exact, and directions the rows do not span can be left out exactly (the optimum has
no component there). In that basis the loss's curvature is close to diagonal, ``c * eig_j``
(``c`` the loss's mean curvature per logit), which gives L-BFGS a diagonal start
``1 / (c * eig_j + lam)`` that follows the regularisation: without it strong regularisation and
correlated columns make the first steps crawl. When the eigendecomposition would be too costly
(more than ``max_exact`` directions), the top ``rank`` directions are estimated from a row sample
(randomised subspace iteration) and the rest share their mean eigenvalue (a Nystrom
preconditioner); the weights then stay in the original coordinates.

The solver is L-BFGS with a per-problem backtracking line search (Armijo, or Hager and Zhang's
approximate Wolfe test where float32 rounding hides the decrease); each problem stops on its own
when ``max |grad f_b| <= tol`` (scikit-learn's lbfgs criterion). Moving along a regularisation
path keeps the curvature memory: changing ``lam`` by ``d`` changes every stored gradient
difference by exactly ``d * s``, so the pairs stay exact.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

LOSSES = ("log_loss", "squared_hinge")

#: Rows per block of the loss and gradient, chosen so that a block's logits stay near 64 MiB.
_BLOCK_ELEMENTS = 1 << 24
#: Armijo sufficient-decrease constant and the most halvings of one line search.
_ARMIJO = 1e-4
_MAX_HALVINGS = 30
#: Approximate Wolfe: the slope at the trial point at most this times |slope at the start|
#: (Hager and Zhang's 1 - 2 * delta with delta = 0.1), and the objective not above the start's
#: by more than this relative amount (float32 rounding).
_APPROX_WOLFE = 0.8
_FLAT = 1e-6
#: Eigenvalues below this fraction of the largest count as directions the rows do not span.
_NULL = 1e-7


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise ``torch.device(device)``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; use 'auto' or 'cpu'")
    return resolved


@contextlib.contextmanager
def torch_threads(n_threads: int) -> Iterator[None]:
    """Run torch's CPU kernels on ``n_threads`` threads, restoring the previous count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n_threads)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- coordinates -------------------------------------------------------------------------------


@dataclass
class Basis:
    """Where the weights are solved for; see the module docstring.

    ``U`` (D, r) has orthonormal columns. ``rotate``: the weights live in ``U``'s coordinates
    (``r <= D``, the rows span no other direction, or ``r == D``); ``eig`` holds the covariance's
    eigenvalues along them. Otherwise (Nystrom): the weights stay in the original D
    coordinates, ``U`` holds the top directions, ``eig`` their eigenvalues and ``rest`` the mean
    eigenvalue of the others.
    """

    rotate: bool
    U: torch.Tensor
    eig: torch.Tensor
    rest: float = 0.0
    # The last rows rotated, and their rotation (a search and its refit rotate the same rows).
    _last: tuple[torch.Tensor, torch.Tensor] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def width(self) -> int:
        """Number of weight rows per output in the working coordinates."""
        return self.U.shape[1] if self.rotate else self.U.shape[0]

    def rows(self, X: torch.Tensor) -> torch.Tensor:
        """The rows in the working coordinates (contiguous; computed once for the same ``X``)."""
        if not self.rotate:
            return X.contiguous()
        if self._last is None or self._last[0] is not X:
            self._last = (X, (X @ self.U).contiguous())
        return self._last[1]

    def weights(self, W: torch.Tensor) -> torch.Tensor:
        """Working-coordinate weights (outputs, width) back to the original columns."""
        return W @ self.U.T if self.rotate else W


def make_basis(
    X: torch.Tensor,
    *,
    max_exact: int = 2048,
    sample_rows: int = 8192,
    rank: int = 384,
    seed: int = 0,
) -> Basis:
    """The solving coordinates of the centred rows ``X`` (n, D); see :class:`Basis`.

    Exact eigenvectors when the smaller side of ``X`` is at most ``max_exact`` (from the rows'
    D x D covariance, over at most ``sample_rows`` rows, or from the n x n Gram matrix when rows
    are fewer than columns); otherwise the top ``rank`` directions of a row sample.
    """
    n, D = X.shape
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    sample = X
    if n > sample_rows:
        picked = torch.randperm(n, generator=gen)[:sample_rows].sort().values.to(X.device)
        sample = X[picked]
    m = sample.shape[0]
    if n < D and n <= max_exact:
        # Fewer rows than columns: the rows' own Gram matrix gives the directions they span.
        gram = (X @ X.T).to(torch.float64)
        mu, vec = torch.linalg.eigh(gram)
        keep = mu > _NULL * mu[-1].clamp_min(1e-30)
        mu, vec = mu[keep], vec[:, keep]
        # Right singular vectors of X: X^T u / sqrt(mu); re-orthonormalised against rounding.
        U = (X.T.to(torch.float64) @ vec) / torch.sqrt(mu)[None, :]
        U, _ = torch.linalg.qr(U)
        return Basis(True, U.to(torch.float32).contiguous(), (mu / n).float())
    if D <= max_exact:
        cov = (sample.T @ sample).to(torch.float64) / m
        eig, vec = torch.linalg.eigh(cov)
        if m == n:  # every row seen: directions without variance can be left out exactly
            keep = eig > _NULL * eig[-1].clamp_min(1e-30)
            eig, vec = eig[keep], vec[:, keep]
        return Basis(True, vec.to(torch.float32).contiguous(), eig.clamp_min(0.0).float())
    return _nystrom(sample, rank=min(rank, m, D), generator=gen)


def _nystrom(sample: torch.Tensor, *, rank: int, generator: torch.Generator) -> Basis:
    m, D = sample.shape
    omega = torch.randn(D, rank + 8, generator=generator).to(sample.device)
    Y = sample.T @ (sample @ omega)
    for _ in range(2):  # subspace iteration sharpens the top directions
        Q, _ = torch.linalg.qr(Y)
        Y = sample.T @ (sample @ Q)
    Q, _ = torch.linalg.qr(Y)
    small = (Q.T @ (sample.T @ (sample @ Q))).to(torch.float64) / m
    eig, vec = torch.linalg.eigh(small)
    eig, vec = eig[-rank:], vec[:, -rank:]
    U = (Q.to(torch.float64) @ vec).to(torch.float32).contiguous()
    total = float((sample * sample).sum()) / m
    rest = max(total - float(eig.sum()), 0.0) / max(D - rank, 1)
    return Basis(False, U, eig.float().clamp_min(0.0), rest)


@dataclass
class SolveReport:
    """How each fit of one :meth:`Batch.solve` ended (per fit: the worst of its problems)."""

    n_iter: np.ndarray
    converged: np.ndarray
    grad_max: np.ndarray


@dataclass
class _Work:
    """The problems still being solved, and their slices of every per-output quantity.

    Parameter matrices hold one row per output: (outputs, width + 1), the intercept last, so
    a problem's slice is a contiguous block of rows.
    """

    problems: torch.Tensor  # (p,) problem indices
    outputs: torch.Tensor  # (p * cpp,) output indices, problem by problem
    P: torch.Tensor  # (p * cpp, width + 1)
    G: torch.Tensor
    f: torch.Tensor  # (p,) float64
    lam: torch.Tensor  # (p,) float64
    curvature: torch.Tensor  # (p * cpp,)
    memory: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (s, y, rho (p,))
    n_iter: torch.Tensor  # (p,) int64

    def subset(self, keep: torch.Tensor, cpp: int) -> _Work:
        """The problems where ``keep`` is true."""
        rows = _rows_of(torch.nonzero(keep).squeeze(1), cpp)
        return _Work(
            problems=self.problems[keep],
            outputs=self.outputs[rows],
            P=self.P[rows],
            G=self.G[rows],
            f=self.f[keep],
            lam=self.lam[keep],
            curvature=self.curvature[rows],
            memory=[(s[rows], yv[rows], rho[keep]) for s, yv, rho in self.memory],
            n_iter=self.n_iter[keep],
        )


#: A run of rows: (start, stop, the fits taking part as a (B,) bool array, or None for all).
Run = tuple[int, int, np.ndarray | None]


def _segments(idle: np.ndarray) -> tuple[np.ndarray | None, list[Run]]:
    """Rows ordered by the fits they take no part in (``idle``: (B, n), weight 0), and the
    runs of that order: (start, stop, fits taking part as a (B,) bool array, or ``None`` when
    every fit does). Rows that every fit uses keep their order and make one run."""
    if not idle.any():
        return None, [(0, idle.shape[1], None)]
    _, code = np.unique(idle.T, axis=0, return_inverse=True)
    code = code.reshape(-1)
    order = np.argsort(code, kind="stable")
    bounds = [0, *(np.flatnonzero(np.diff(code[order])) + 1).tolist(), len(order)]
    runs = []
    for start, stop in itertools.pairwise(bounds):
        taking = ~idle[:, order[start]]
        runs.append((start, stop, None if taking.all() else taking))
    return order, runs


def _rows_of(problems: torch.Tensor, cpp: int) -> torch.Tensor:
    """Output rows of ``problems`` (each owns ``cpp`` consecutive outputs)."""
    offsets = torch.arange(cpp, device=problems.device)
    return (problems[:, None] * cpp + offsets[None, :]).reshape(-1)


class Batch:
    """``B`` fits with ``K`` outputs each over the same rows; see the module docstring.

    A *problem* is what one line search and one stopping test act on: a whole fit for the
    multinomial log-loss (its K outputs are coupled by the softmax), one output of one fit for
    the one-vs-rest squared hinge (its K binary problems are independent, so each gets its own
    step and stops on its own). Problems that have stopped leave the matrix products.

    Args:
        X: (n, D) float32 rows, centred.
        y: (n,) class indices in ``0..K-1``.
        n_classes: ``K`` (at least 2; two-class log-loss problems still use 2 outputs).
        weights: (B, n) non-negative row weights per fit (0 = not in the fit).
        loss: One of :data:`LOSSES`.
        basis: Solving coordinates of ``X`` (:func:`make_basis`).
        device: Where the tensors live.
        history: L-BFGS memory (pairs kept).
        binary: Two classes and the squared hinge: one output whose positive class is 1 (the
            two one-vs-rest problems of two classes mirror each other).
    """

    def __init__(
        self,
        X: torch.Tensor,
        y: np.ndarray,
        n_classes: int,
        weights: np.ndarray,
        *,
        loss: str,
        basis: Basis,
        device: torch.device,
        history: int = 10,
        binary: bool = False,
    ) -> None:
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if binary and (loss != "squared_hinge" or n_classes != 2):
            raise ValueError("binary=True is for two classes and the squared hinge")
        self.loss = loss
        self.device = device
        self.basis = basis
        weights = np.asarray(weights, dtype=np.float64)
        # Rows grouped by the fits they take no part in (each CV fold's held-out rows): a block
        # of such rows leaves those fits out of its products (a fifth of them at 5 folds).
        self.order, runs = _segments(weights == 0)
        self.segments = [
            (start, stop, None if taking is None else torch.as_tensor(taking, device=device))
            for start, stop, taking in runs
        ]
        self.X = basis.rows(X)
        if self.order is not None:
            self.X = self.X[torch.as_tensor(self.order, device=device)]
        self.n, self.D = self.X.shape
        self.K = 1 if binary else int(n_classes)  # outputs per fit
        self.B = int(weights.shape[0])
        self.cpp = self.K if loss == "log_loss" else 1  # outputs per problem
        self.n_out = self.B * self.K
        self.n_problems = self.n_out // self.cpp
        y = np.asarray(y, dtype=np.int64)
        if self.order is not None:
            y, weights = y[self.order], weights[:, self.order]
        self.y = torch.as_tensor(y, device=device)
        w = torch.as_tensor(weights, device=device)
        self.mass = w.sum(dim=1)  # m_b
        if bool((self.mass <= 0).any()):
            raise ValueError("every fit needs at least one row with a positive weight")
        # Row weights divided by m_b, laid out (n, B) for the blocks.
        self.row_w = (w / self.mass[:, None]).T.contiguous().to(torch.float32)
        outputs = torch.arange(self.n_out, device=device)
        self.out_fit = outputs // self.K
        self.out_class = outputs % self.K + (1 if binary else 0)  # hinge: positive class
        self.problem_fit = self.out_fit[:: self.cpp]
        self.history = int(history)
        # Mean curvature of the loss per logit, per output, kept from the last accepted point;
        # it starts at the value for zero weights (uniform softmax, or every row inside the
        # hinge's margin).
        start = 1.0 / self.K if loss == "log_loss" else 2.0
        self.curvature = torch.full((self.n_out,), start, device=device)
        self._memory: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._memory_lam: torch.Tensor | None = None
        # The last solve's (P, f, G, lam per problem), for a warm start from its result.
        self._end: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        # Work counters: objective evaluations, and outputs evaluated (the products' width).
        self.evaluations = 0
        self.output_evaluations = 0

    # -- layout ------------------------------------------------------------------------------

    def zeros(self) -> torch.Tensor:
        """A parameter matrix of zeros, (B * K, width + 1)."""
        return torch.zeros(self.n_out, self.D + 1, device=self.device)

    def _expand(self, values: torch.Tensor) -> torch.Tensor:
        """Per-problem values (p,) as a float32 column (p * cpp, 1)."""
        return values.to(torch.float32).repeat_interleave(self.cpp)[:, None]

    def _dot(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-problem inner products, (p,) float64."""
        return (a * b).view(-1, self.cpp * (self.D + 1)).sum(dim=1).to(torch.float64)

    def _abs_max(self, a: torch.Tensor) -> torch.Tensor:
        return a.abs().view(-1, self.cpp * (self.D + 1)).amax(dim=1).to(torch.float64)

    def coefficients(self, P: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Weights in the original columns (B, K, D) and intercepts (B, K), float64 numpy."""
        W = self.basis.weights(P[:, : self.D]).to(torch.float64).cpu().numpy()
        b = P[:, self.D].to(torch.float64).cpu().numpy()
        return W.reshape(self.B, self.K, -1), b.reshape(self.B, self.K)

    def logits(self, P: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Logits of rows ``start:stop`` for the outputs of ``P``, (rows, outputs)."""
        return torch.addmm(P[:, self.D], self.X[start:stop], P[:, : self.D].T)

    def predict(self, P: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Arg-max class (n, B) int64 and unweighted loss (n, B) float64 of every row under
        every fit, rows in the order given."""
        out = torch.empty(self.n, self.B, dtype=torch.int64, device=self.device)
        losses = torch.empty(self.n, self.B, dtype=torch.float64, device=self.device)
        for start, stop, _ in self._blocks(self.n_out):
            z = self.logits(P, start, stop).view(stop - start, self.B, self.K)
            out[start:stop] = (z[:, :, 0] > 0).long() if self.K == 1 else z.argmax(dim=2)
            losses[start:stop] = self._row_losses(z, self.y[start:stop])
        found, loss = out.cpu().numpy(), losses.cpu().numpy()
        if self.order is None:
            return found, loss
        given, given_loss = np.empty_like(found), np.empty_like(loss)
        given[self.order], given_loss[self.order] = found, loss
        return given, given_loss

    def _row_losses(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each row's loss under each fit, (rows, B) float64, from its logits (rows, B, K)."""
        if self.loss == "log_loss":
            index = y.view(-1, 1, 1).expand(-1, z.shape[1], 1)
            return (torch.logsumexp(z, dim=2) - z.gather(2, index).squeeze(2)).double()
        classes = self.out_class[: self.K]
        signs = torch.where(y[:, None] == classes[None, :], 1.0, -1.0)  # (rows, K)
        slack = torch.clamp(1.0 - signs[:, None, :] * z, min=0.0)
        return (slack * slack).double().sum(dim=2)

    def _blocks(self, width: int) -> list[tuple[int, int, torch.Tensor | None]]:
        """(start, stop, fits taking part as a (B,) bool tensor, or ``None`` for all) of each
        block of rows."""
        rows = max(1, _BLOCK_ELEMENTS // max(1, width))
        return [
            (s, min(s + rows, stop), active)
            for start, stop, active in self.segments
            for s in range(start, stop, rows)
        ]

    # -- objective -----------------------------------------------------------------------------

    def _loss_block(
        self, z: torch.Tensor, start: int, stop: int, outputs: torch.Tensor, fits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Weighted loss per problem (p,) float64, weighted d loss / d z (rows, outputs) and
        weighted curvature per output, for rows ``start:stop``."""
        y = self.y[start:stop]
        rw = self.row_w[start:stop][:, fits]  # (rows, p)
        rows = stop - start
        if self.loss == "log_loss":
            z = z.view(rows, -1, self.K)
            index = y.view(-1, 1, 1).expand(-1, z.shape[1], 1)
            loss = torch.logsumexp(z, dim=2) - z.gather(2, index).squeeze(2)
            prob = torch.softmax(z, dim=2)
            curv = (prob * (1.0 - prob) * rw[:, :, None]).sum(dim=0).reshape(-1)
            grad = prob.scatter_add_(2, index, -torch.ones_like(index, dtype=prob.dtype))
            grad = (grad * rw[:, :, None]).view(rows, -1)
        else:
            signs = torch.where(y[:, None] == self.out_class[outputs][None, :], 1.0, -1.0)
            slack = torch.clamp(1.0 - signs * z, min=0.0)
            loss = slack * slack
            curv = (2.0 * (slack > 0) * rw).sum(dim=0)
            grad = -2.0 * signs * slack * rw
        return (loss.double() * rw.double()).sum(dim=0), grad, curv

    def _value_and_grad(
        self, P: torch.Tensor, work: _Work
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Objective (p,) float64, gradient and mean curvature per output of ``work``'s
        problems at ``P`` (their rows only)."""
        self.evaluations += 1
        self.output_evaluations += P.shape[0]
        fits = self.problem_fit[work.problems]
        f = torch.zeros(len(work.problems), dtype=torch.float64, device=self.device)
        G = torch.zeros_like(P)
        curvature = torch.zeros(P.shape[0], device=self.device)
        for start, stop, active in self._blocks(P.shape[0]):
            if active is None:
                z = self.logits(P, start, stop)
                loss, dz, curv = self._loss_block(z, start, stop, work.outputs, fits)
                f += loss
                G[:, : self.D].addmm_(dz.T, self.X[start:stop])
                G[:, self.D] += dz.sum(dim=0)
                curvature += curv
                continue
            # Only the fits these rows take part in.
            taking = active[fits]
            if not bool(taking.any()):
                continue
            outs = torch.nonzero(taking.repeat_interleave(self.cpp)).squeeze(1)
            z = self.logits(P[outs], start, stop)
            loss, dz, curv = self._loss_block(z, start, stop, work.outputs[outs], fits[taking])
            f[taking] += loss
            G[outs, : self.D] += dz.T @ self.X[start:stop]
            G[outs, self.D] += dz.sum(dim=0)
            curvature[outs] += curv
        W = P[:, : self.D]
        G[:, : self.D] += self._expand(work.lam) * W
        norm_sq = (W * W).view(-1, self.cpp * self.D).sum(dim=1).to(torch.float64)
        return f + 0.5 * work.lam * norm_sq, G, curvature

    # -- solver --------------------------------------------------------------------------------

    def _shift_memory(self, lam_out: torch.Tensor) -> None:
        """Keep the curvature pairs exact for new per-output ``lam`` (module docstring)."""
        if self._memory and self._memory_lam is not None:
            delta = (lam_out - self._memory_lam).to(torch.float32)[:, None]
            if bool((delta != 0).any()):
                for s, yv in self._memory:
                    yv[:, : self.D] += delta * s[:, : self.D]
        self._memory_lam = lam_out.clone()

    def reset_memory(self) -> None:
        """Forget the curvature pairs (e.g. before an unrelated solve)."""
        self._memory = []
        self._memory_lam = None

    def _rho(self, s: torch.Tensor, yv: torch.Tensor) -> torch.Tensor:
        sy = self._dot(s, yv)
        # A pair without positive curvature (or unused by a problem) is skipped.
        return torch.where(sy > 1e-12, 1.0 / sy.clamp_min(1e-300), torch.zeros_like(sy))

    def _start_inverse(self, q: torch.Tensor, work: _Work) -> torch.Tensor:
        """Apply the diagonal (or Nystrom) inverse-Hessian guess to ``q`` in place."""
        curv = work.curvature.clamp_min(1e-6)[:, None]
        lam = self._expand(work.lam)
        eig = self.basis.eig[None, :]
        if self.basis.rotate:
            q[:, : self.D] /= curv * eig + lam
        else:
            U = self.basis.U
            rest = 1.0 / (curv * self.basis.rest + lam)
            top = 1.0 / (curv * eig + lam)
            q[:, : self.D] = rest * q[:, : self.D] + ((top - rest) * (q[:, : self.D] @ U)) @ U.T
        q[:, self.D] /= curv[:, 0]
        return q

    def _direction(self, work: _Work) -> torch.Tensor:
        """L-BFGS two-loop recursion, per problem, with a scaled diagonal start."""
        q = work.G.clone()
        alphas = []
        for s, yv, rho in reversed(work.memory):
            alpha = rho * self._dot(s, q)
            q -= self._expand(alpha) * yv
            alphas.append(alpha)
        q = self._start_inverse(q, work)
        if work.memory:
            s, yv, rho = work.memory[-1]
            yhy = self._dot(yv, self._start_inverse(yv.clone(), work))
            ok = (rho > 0) & (yhy > 0)
            gamma = torch.where(ok, 1.0 / (rho * yhy).clamp_min(1e-300), torch.ones_like(yhy))
            q *= self._expand(gamma)
        for (s, yv, rho), alpha in zip(work.memory, reversed(alphas), strict=True):
            beta = rho * self._dot(yv, q)
            q += self._expand(alpha - beta) * s
        return -q

    def solve(
        self, P: torch.Tensor, C: np.ndarray, *, tol: float, max_iter: int
    ) -> tuple[torch.Tensor, SolveReport]:
        """Minimise every fit from ``P`` at regularisation ``C`` (B,); returns the new
        parameters (``P`` is not modified) and how each fit ended."""
        lam_fit = torch.as_tensor(1.0 / np.asarray(C, dtype=np.float64), device=self.device)
        lam_fit = lam_fit / self.mass
        self._shift_memory(lam_fit[self.out_fit])
        problems = torch.arange(self.n_problems, device=self.device)
        work = _Work(
            problems=problems,
            outputs=_rows_of(problems, self.cpp),
            P=P.clone(),
            G=P,
            f=torch.zeros(self.n_problems, dtype=torch.float64, device=self.device),
            lam=lam_fit[self.problem_fit],
            curvature=self.curvature.clone(),
            memory=[(s, yv, self._rho(s, yv)) for s, yv in self._memory],
            n_iter=torch.zeros(self.n_problems, dtype=torch.int64, device=self.device),
        )
        if self._end is not None and P is self._end[0]:
            # Warm start from the last solve's result: its objective and gradient at the new
            # lam differ only by the penalty term, so no pass over the rows is needed.
            _, f_end, G_end, lam_end = self._end
            W = P[:, : self.D]
            delta = work.lam - lam_end
            norm_sq = (W * W).view(-1, self.cpp * self.D).sum(dim=1).to(torch.float64)
            work.f = f_end + 0.5 * delta * norm_sq
            work.G = G_end.clone()
            work.G[:, : self.D] += self._expand(delta) * W
        else:
            work.f, work.G, work.curvature = self._value_and_grad(work.P, work)
        final = _Work(**{**work.__dict__, "P": work.P.clone(), "G": work.G.clone()})
        final.memory = [(s.clone(), yv.clone(), rho) for s, yv, rho in work.memory]
        active = self._abs_max(work.G) > tol
        for _ in range(max_iter):
            if not bool(active.all()):
                self._retire(work, ~active, final)
                work = work.subset(active, self.cpp)
            if len(work.problems) == 0:
                break
            accepted = self._iterate(work)
            work.n_iter += 1
            active = accepted & (self._abs_max(work.G) > tol)
        self._retire(work, torch.ones_like(work.problems, dtype=bool), final)
        self.curvature = final.curvature
        self._memory = [(s, yv) for s, yv, _ in final.memory]
        self._end = (final.P, final.f, final.G, final.lam)
        return final.P, self._report(final.n_iter, self._abs_max(final.G), tol)

    def _report(self, n_iter: torch.Tensor, gmax: torch.Tensor, tol: float) -> SolveReport:
        per_fit = torch.zeros(self.B, dtype=torch.int64, device=self.device)
        per_fit.scatter_reduce_(0, self.problem_fit, n_iter, reduce="amax")
        worst = torch.zeros(self.B, dtype=torch.float64, device=self.device)
        worst.scatter_reduce_(0, self.problem_fit, gmax, reduce="amax")
        return SolveReport(
            n_iter=per_fit.cpu().numpy(),
            converged=(worst <= tol).cpu().numpy(),
            grad_max=worst.cpu().numpy(),
        )

    def _retire(self, work: _Work, leaving: torch.Tensor, final: _Work) -> None:
        """Write the state of ``work``'s ``leaving`` problems into ``final`` (the full layout),
        their newest curvature pairs included: they seed the next solve along the path."""
        if not bool(leaving.any()):
            return
        local = _rows_of(torch.nonzero(leaving).squeeze(1), self.cpp)
        rows = work.outputs[local]
        problems = work.problems[leaving]
        final.P[rows] = work.P[local]
        final.G[rows] = work.G[local]
        final.curvature[rows] = work.curvature[local]
        final.n_iter[problems] = work.n_iter[leaving]
        final.f[problems] = work.f[leaving]
        while len(final.memory) < len(work.memory):
            final.memory.insert(0, (self.zeros(), self.zeros(), torch.zeros(self.n_problems)))
        offset = len(final.memory) - len(work.memory)
        for i, (s, yv, _) in enumerate(work.memory):
            full_s, full_y, _ = final.memory[offset + i]
            full_s[rows] = s[local]
            full_y[rows] = yv[local]
        final.memory = final.memory[-self.history :]

    def _iterate(self, work: _Work) -> torch.Tensor:
        """One L-BFGS step of every problem in ``work`` (in place); returns which accepted."""
        d = self._direction(work)
        slope = self._dot(work.G, d)
        bad = slope >= 0  # not a descent direction: restart from the gradient
        if bool(bad.any()):
            d = torch.where(self._expand(bad) > 0, -work.G, d)
            slope = torch.where(bad, -self._dot(work.G, work.G), slope)
        P_new, f_new, G_new, curv, accepted = self._line_search(work, d, slope)
        keep = self._expand(accepted) > 0
        s = torch.where(keep, P_new - work.P, 0.0)
        yv = torch.where(keep, G_new - work.G, 0.0)
        work.P, work.G, work.f, work.curvature = P_new, G_new, f_new, curv
        work.memory.append((s, yv, self._rho(s, yv)))
        if len(work.memory) > self.history:
            work.memory.pop(0)
        return accepted

    def _line_search(
        self, work: _Work, d: torch.Tensor, slope: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Backtracking search from step 1, per problem; returns ``P + t d`` (``P`` where no
        step was accepted), the objective, gradient and curvature there, and which problems
        accepted a step. The gradient comes with each trial: the first trial is accepted
        almost always, and then it is needed anyway. Later trials evaluate only the problems
        still searching."""
        f_out, P_out, G_out = work.f.clone(), work.P.clone(), work.G.clone()
        curv_out = work.curvature.clone()
        accepted = torch.zeros_like(work.f, dtype=bool)
        idx = torch.arange(len(work.f), device=self.device)  # problems still searching
        sub, d_sub, slope_sub = work, d, slope
        step = torch.ones_like(work.f)
        for _ in range(_MAX_HALVINGS):
            trial = sub.P + self._expand(step) * d_sub
            f_trial, G_trial, curv = self._value_and_grad(trial, sub)
            armijo = f_trial <= sub.f + _ARMIJO * step * slope_sub
            # Near the optimum float32 rounding hides the decrease: accept a step whose end
            # slope shows it went downhill (approximate Wolfe).
            end_slope = self._dot(G_trial, d_sub)
            flat = f_trial <= sub.f + _FLAT * sub.f.abs()
            ok = armijo | ((end_slope <= _APPROX_WOLFE * slope_sub.abs()) & flat)
            if bool(ok.any()):
                local = _rows_of(torch.nonzero(ok).squeeze(1), self.cpp)
                rows = _rows_of(idx[ok], self.cpp)
                P_out[rows] = trial[local]
                G_out[rows] = G_trial[local]
                curv_out[rows] = curv[local]
                f_out[idx[ok]] = f_trial[ok]
                accepted[idx[ok]] = True
            if bool(ok.all()):
                break
            left = ~ok
            local = _rows_of(torch.nonzero(left).squeeze(1), self.cpp)
            idx, step = idx[left], step[left] * 0.5
            d_sub, slope_sub = d_sub[local], slope_sub[left]
            sub = sub.subset(left, self.cpp)
        return P_out, f_out, G_out, curv_out, accepted
