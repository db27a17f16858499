"""One-hidden-layer MLP heads trained as one batch: every CV fold and every alpha at once.

:class:`MLPHeadCV` chooses the L2 strength ``alpha`` by cross-validation: the fits of every
(fold, alpha) pair train together in torch, one batched matrix product per layer and step, each
fit on a mini-batch gathered from its own training rows, with its own Adam state, early stopping
and best-epoch weights; a fit that has stopped leaves the batch. The refit at the chosen alpha is
an :class:`MLPHead`, whose prediction is numpy only (a saved head needs no torch).

The model follows scikit-learn's ``MLPClassifier`` as this project configured it (256 ReLU
units, softmax output, cross-entropy plus ``alpha / 2 * |W|^2 / batch rows``, Adam at 3e-3,
Glorot-uniform start, batches of 200 of a fit's rows, early stopping on 10% of its rows
after 10 epochs without a gain above ``tol``, the best epoch's weights kept; without early
stopping, a stop after 10 epochs in which the training loss did not fall by ``tol``), with two
changes that make it cheap on wide features, each applied per fit to that fit's own training
rows: the columns are standardised, and reduced to their top ``max_features`` principal
directions (randomised subspace iteration; 256 by default, and never more than the fit's rows
span) when wider. The hidden layer's cost then no longer grows with the feature width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from classifiers.cv_table import PredictsWithRefit, store_search
from classifiers.linear import _Session, _splits, scorer

__all__ = ["MLPHead", "MLPHeadCV"]

#: Adam's constants (scikit-learn's defaults).
_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8
#: Rows of a fit per mini-batch (scikit-learn's batch_size="auto" is min(200, rows)).
_FIT_BATCH = 200
#: Principal directions a fit keeps at most (the hidden layer's input width).
_MAX_FEATURES = 256


@dataclass
class _Prep:
    """Standardisation and principal directions of one fit's training rows."""

    mean: Any  # (D,)
    scale: Any  # (D,)
    components: Any | None  # (D, p) or None

    def apply(self, X: Any) -> Any:
        Z = (X - self.mean) / self.scale
        return Z if self.components is None else Z @ self.components


def _top_directions(Z: Any, p: int, generator: Any, torch: Any) -> Any:
    """Top ``p`` principal directions of the centred rows ``Z`` (randomised subspace
    iteration, two power steps), orthonormal columns (D, p)."""
    D = Z.shape[1]
    omega = torch.randn(D, p + 8, generator=generator).to(Z.device)
    Y = Z.T @ (Z @ omega)
    for _ in range(2):
        Q, _ = torch.linalg.qr(Y)
        Y = Z.T @ (Z @ Q)
    Q, _ = torch.linalg.qr(Y)
    small = (Q.T @ (Z.T @ (Z @ Q))).double()
    _, vectors = torch.linalg.eigh(small)
    return (Q.double() @ vectors[:, -p:]).float().contiguous()


def _prepare(X: Any, rows: Any, max_features: int, generator: Any, torch: Any) -> _Prep:
    part = X[rows].double()
    mean = part.mean(dim=0)
    scale = part.std(dim=0, correction=0)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    prep = _Prep(mean.float(), scale.float(), None)
    if X.shape[1] > max_features:
        Z = prep.apply(X[rows])
        Z = Z - Z.mean(dim=0)
        prep.components = _top_directions(Z, max_features, generator, torch)
    return prep


@dataclass
class _Fits:
    """Parameters (one slice per fit), Adam moments, and each fit's early-stopping state."""

    params: list[Any]  # W1 (F, p, h), b1 (F, h), W2 (F, h, K), b2 (F, K)
    moments: list[tuple[Any, Any]]
    best: list[Any]
    best_score: Any  # (F,)
    stale: Any  # (F,) epochs without improvement
    best_loss: Any  # (F,) lowest epoch training loss (the stopping rule without validation)
    epoch_loss: Any  # (F,) this epoch's summed training loss, weighted by batch rows
    epoch_rows: Any  # (F,) rows behind epoch_loss
    epochs: Any  # (F,)
    # (4, F) float32 Adam steps per parameter tensor and fit: fused Adam counts each slice it
    # is given on its own, so the four parameters of a fit need four (equal) counters.
    steps: Any
    index: Any  # (F,) position of each fit in the caller's list

    def subset(self, keep: Any) -> _Fits:
        def take(t: Any) -> Any:
            return t[keep].detach().clone()

        params = [take(p).requires_grad_(True) for p in self.params]
        return _Fits(
            params=params,
            moments=[(take(m), take(v)) for m, v in self.moments],
            best=[take(b) for b in self.best],
            best_score=self.best_score[keep],
            stale=self.stale[keep],
            best_loss=self.best_loss[keep],
            epoch_loss=self.epoch_loss[keep],
            epoch_rows=self.epoch_rows[keep],
            epochs=self.epochs[keep],
            steps=self.steps[:, keep].clone(),
            index=self.index[keep],
        )


def _glorot(F: int, fan_in: int, fan_out: int, generator: Any, torch: Any) -> Any:
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return (torch.rand(F, fan_in, fan_out, generator=generator) * 2.0 - 1.0) * bound


def _start(F: int, p: int, h: int, K: int, generator: Any, torch: Any, device: Any) -> _Fits:
    W1 = _glorot(F, p, h, generator, torch)
    b1 = (torch.rand(F, h, generator=generator) * 2.0 - 1.0) * math.sqrt(6.0 / (p + h))
    W2 = _glorot(F, h, K, generator, torch)
    b2 = (torch.rand(F, K, generator=generator) * 2.0 - 1.0) * math.sqrt(6.0 / (h + K))
    params = [t.to(device).requires_grad_(True) for t in (W1, b1, W2, b2)]
    return _Fits(
        params=params,
        moments=[(torch.zeros_like(t), torch.zeros_like(t)) for t in params],
        best=[t.detach().clone() for t in params],
        best_score=torch.full((F,), -math.inf, device=device),
        stale=torch.zeros(F, dtype=torch.int64, device=device),
        best_loss=torch.full((F,), math.inf, device=device),
        epoch_loss=torch.zeros(F, device=device),
        epoch_rows=torch.zeros(F, device=device),
        epochs=torch.zeros(F, dtype=torch.int64, device=device),
        steps=torch.zeros(4, F, dtype=torch.float32, device=device),
        index=torch.arange(F, device=device),
    )


def _logits(inputs: Any, params: list[Any], torch: Any) -> Any:
    """(F, rows, p) inputs -> (F, rows, K) logits."""
    W1, b1, W2, b2 = params
    hidden = torch.relu(torch.baddbmm(b1[:, None, :], inputs, W1))
    return torch.baddbmm(b2[:, None, :], hidden, W2)


@dataclass
class _Plan:
    """What :func:`_train` needs: inputs per group, and per fit its group, rows, alpha."""

    inputs: Any  # (G, n, p) float32
    y: Any  # (n,) int64
    group: Any  # (F,) input group of each fit
    train: Any  # (F, n) float32 row weights (0 = not a training row of the fit)
    val: Any  # (F, n) bool validation rows (all False: no early stopping)
    alpha: Any  # (F,) float32
    bf16: bool = False  # bfloat16 matrix products in training


def _train(
    plan: _Plan, *, hidden: int, n_classes: int, est: Any, generator: Any, torch: Any
) -> tuple[list[Any], Any, Any]:
    """Train every fit of ``plan``; returns its final parameters (stacked per fit: the best
    epoch's with early stopping), epochs run and best validation accuracy (NaN without)."""
    F = plan.train.shape[0]
    device = plan.inputs.device
    fits = _start(F, plan.inputs.shape[2], hidden, n_classes, generator, torch, device)
    final = [t.detach().clone() for t in fits.params]
    epochs_out = torch.zeros(F, dtype=torch.int64, device=device)
    best_out = torch.full((F,), math.nan, device=device)
    early = plan.val.any(dim=1)
    own = _own_rows(plan, torch)
    base = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    shufflers = [torch.Generator().manual_seed(base + g) for g in range(len(own))]
    while len(fits.index):
        order = _epoch_order(own, est.batch_rows, shufflers, torch)
        for batch in order:
            _step(fits, plan, batch, est.learning_rate, torch)
        done = _end_epoch(fits, plan, early, est, torch)
        if bool(done.any()):
            _keep_final(fits, done, early, final, epochs_out, best_out)
            fits = fits.subset(~done)
    return final, epochs_out, best_out


def _own_rows(plan: _Plan, torch: Any) -> list[Any]:
    """Per input group, the rows its fits train on (validation rows left out)."""
    groups = int(plan.group.max()) + 1
    first = [int(torch.nonzero(plan.group == g)[0, 0]) for g in range(groups)]
    return [torch.nonzero((plan.train[f] > 0) & ~plan.val[f]).squeeze(1) for f in first]


def _epoch_order(own: list[Any], batch_rows: int, shufflers: list[Any], torch: Any) -> Any:
    """One epoch's mini-batches, (steps, groups, rows) row indices padded with -1: each group's
    rows in a fresh order from its own generator, cut in batches of ``min(batch_rows, rows)``
    (scikit-learn's), so that a fit's batches do not depend on the other groups."""
    sizes = [max(1, min(batch_rows, len(r))) for r in own]
    steps = max(math.ceil(len(r) / b) for r, b in zip(own, sizes, strict=True))
    order = torch.full((steps, len(own), max(sizes)), -1, dtype=torch.int64, device=own[0].device)
    for g, (rows, size, shuffler) in enumerate(zip(own, sizes, shufflers, strict=True)):
        mixed = rows[torch.randperm(len(rows), generator=shuffler).to(rows.device)]
        for k, start in enumerate(range(0, len(rows), size)):
            part = mixed[start : start + size]
            order[k, g, : len(part)] = part
    return order


def _use_bf16(precision: str, device: Any, torch: Any) -> bool:
    """``"auto"``: bfloat16 products where the hardware has them (a CUDA device that supports
    them, a CPU with AVX512-BF16 or AMX); elsewhere they would be emulated, and slower."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def _autocast(plan: _Plan, torch: Any) -> Any:
    """bfloat16 matrix products (float32 weights and sums) when the plan asks for them."""
    return torch.autocast(
        device_type=plan.inputs.device.type, dtype=torch.bfloat16, enabled=plan.bf16
    )


def _step(fits: _Fits, plan: _Plan, batch: Any, lr: float, torch: Any) -> None:
    """One Adam step of every fit on its group's mini-batch in ``batch`` ((groups, rows) row
    indices, -1 = padding); a fit whose batch is empty this step does not step."""
    index = fits.index
    group = plan.group[index]
    rows = batch[group]  # (F, b)
    present = rows >= 0
    rows = rows.clamp_min(0)
    inputs = plan.inputs[group[:, None], rows]  # (F, b, p)
    weights = plan.train[index[:, None], rows] * present
    count = weights.sum(dim=1)
    with _autocast(plan, torch):
        logits = _logits(inputs, fits.params, torch).float()
    target = plan.y[rows].unsqueeze(2)
    loss = torch.logsumexp(logits, dim=2) - logits.gather(2, target).squeeze(2)
    stepping = count > 0
    safe = count.clamp_min(1e-12)
    per_fit = (loss * weights).sum(dim=1) / safe  # the penalty's gradient is added below
    grads = torch.autograd.grad((per_fit * stepping).sum(), fits.params)
    W1, _, W2, _ = fits.params
    with torch.no_grad():
        decay = plan.alpha[index] / safe  # d/dW of alpha / 2 * |W|^2 / rows
        grads[0].add_(W1 * decay.view(-1, 1, 1))
        grads[2].add_(W2 * decay.view(-1, 1, 1))
        norms = (W1 * W1).sum(dim=(1, 2)) + (W2 * W2).sum(dim=(1, 2))
    fits.epoch_loss += (per_fit.detach() + 0.5 * plan.alpha[index] * norms / safe) * count
    fits.epoch_rows += count
    _adam(fits, grads, stepping, lr, torch)


def _adam(fits: _Fits, grads: Sequence[Any], stepping: Any, lr: float, torch: Any) -> None:
    """Adam on each stepping fit's slice of the parameters: torch's fused kernel (one pass
    over parameters, gradients and moments), each (parameter, fit) slice with its own step
    count, so a fit that skipped a step keeps its own bias corrections."""
    from torch.optim.adam import adam  # torch's functional Adam (``fused=True``: one kernel)

    on = torch.nonzero(stepping).squeeze(1).tolist()
    if not on:
        return
    params, grad_parts, firsts, seconds, counts = [], [], [], [], []
    for k, (p, g, (m, v)) in enumerate(zip(fits.params, grads, fits.moments, strict=True)):
        data = p.detach()
        for f in on:
            params.append(data[f])
            grad_parts.append(g[f])
            firsts.append(m[f])
            seconds.append(v[f])
            counts.append(fits.steps[k, f])
    adam(
        params,
        grad_parts,
        firsts,
        seconds,
        [],
        counts,
        fused=True,
        amsgrad=False,
        beta1=_BETA1,
        beta2=_BETA2,
        lr=lr,
        weight_decay=0.0,
        eps=_EPS,
        maximize=False,
    )


def _end_epoch(fits: _Fits, plan: _Plan, early: Any, est: Any, torch: Any) -> Any:
    """Validation accuracy, best weights and the stopping rule (scikit-learn's: more than
    ``patience`` epochs without a gain of ``tol`` in validation accuracy, or, for a fit without
    validation rows, without a fall of ``tol`` in its epoch's training loss, penalty included);
    returns which fits are done."""
    index = fits.index
    fits.epochs += 1
    loss = fits.epoch_loss / fits.epoch_rows.clamp_min(1e-12)
    fell = loss <= fits.best_loss - est.tol
    plain = ~early[index]
    fits.stale = torch.where(plain & fell, torch.zeros_like(fits.stale), fits.stale + plain)
    fits.best_loss = torch.minimum(fits.best_loss, loss)
    fits.epoch_loss.zero_()
    fits.epoch_rows.zero_()
    val = plan.val[index]
    if bool(val.any()):
        with torch.no_grad():
            rows = torch.nonzero(val.any(dim=0)).squeeze(1)
            inputs = plan.inputs[:, rows, :][plan.group[index]]
            pred = _logits(inputs, fits.params, torch).argmax(dim=2)
            hit = (pred == plan.y[rows][None, :]) & val[:, rows]
            score = hit.sum(dim=1) / val[:, rows].sum(dim=1).clamp_min(1)
            improved = score >= fits.best_score + est.tol
            validated = early[index]
            fits.stale = torch.where(
                validated, torch.where(improved, 0, fits.stale + 1), fits.stale
            )
            better = score > fits.best_score
            for best, p in zip(fits.best, fits.params, strict=True):
                best[better] = p.detach()[better]
            fits.best_score = torch.maximum(fits.best_score, score)
    return (fits.stale > est.patience) | (fits.epochs >= est.max_epochs)


def _keep_final(
    fits: _Fits, done: Any, early: Any, final: list[Any], epochs: Any, best: Any
) -> None:
    """Copy the finished fits' weights (the best epoch's with early stopping) to ``final``."""
    index = fits.index[done]
    use_best = early[index]
    for out, p, b in zip(final, fits.params, fits.best, strict=True):
        chosen, current = b[done], p.detach()[done]
        shape = (-1,) + (1,) * (chosen.dim() - 1)
        mask = use_best.view(shape)
        out[index] = chosen * mask + current * ~mask
    epochs[index] = fits.epochs[done]
    # Best validation accuracy; NaN (as ``best`` starts) for a fit without validation rows.
    best[index] = fits.best_score[done].masked_fill(~use_best, math.nan)


class _MLPParams:
    """Parameters and fitted-state helpers shared by :class:`MLPHead` and :class:`MLPHeadCV`."""

    def _check_params(self) -> None:
        for name in ("hidden", "batch_rows", "max_epochs", "patience", "max_features"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}"
            )

    def _validation_rows(self, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A stratified ``validation_fraction`` of all rows (a fit validates on those of its
        own rows); empty without early stopping."""
        val = np.zeros(len(y), dtype=bool)
        if not self.early_stopping:
            return val
        for c in np.unique(y):
            members = rng.permutation(np.flatnonzero(y == c))
            val[members[: round(self.validation_fraction * len(members))]] = True
        return val


def _numpy_predict_proba(head: Any, X: np.ndarray) -> np.ndarray:
    Z = (np.asarray(X, dtype=np.float32) - head.mean_) / head.scale_
    if head.components_ is not None:
        Z = Z @ head.components_
    hidden = np.maximum(Z @ head.coefs_[0] + head.intercepts_[0], 0.0)
    logits = hidden @ head.coefs_[1] + head.intercepts_[1]
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


class MLPHead(_MLPParams, ClassifierMixin, BaseEstimator):
    """One MLP fit (see the module docstring); prediction is numpy only.

    Args:
        hidden: ReLU units.
        alpha: L2 strength (scikit-learn's ``MLPClassifier.alpha``).
        learning_rate: Adam's step size.
        batch_rows: Rows of the fit per mini-batch.
        max_epochs: Most passes over the rows.
        early_stopping: Stop when the accuracy on ``validation_fraction`` of the rows has not
            gained ``tol`` for more than ``patience`` epochs; keep the best epoch's weights.
            Without it (or without validation rows), stop when the epoch's training loss has
            not fallen by ``tol`` for more than ``patience`` epochs (scikit-learn's rule).
        max_features: Principal directions kept when the rows are wider.
        precision: Training's matrix products: ``"fp32"``, ``"bf16"`` (float32 weights and
            sums), or ``"auto"``: bf16 where the hardware computes it natively.
        device, n_jobs, random_state: As for :class:`classifiers.linear.LinearHead`.

    Attributes:
        classes_, mean_, scale_, components_ ((D, p) or ``None``), coefs_, intercepts_,
        n_iter_ (epochs), best_validation_score_ (NaN without early stopping).
    """

    def __init__(
        self,
        hidden: int = 256,
        *,
        alpha: float = 1e-4,
        learning_rate: float = 3e-3,
        batch_rows: int = _FIT_BATCH,
        max_epochs: int = 200,
        early_stopping: bool = True,
        validation_fraction: float = 0.1,
        patience: int = 10,
        tol: float = 1e-4,
        max_features: int = _MAX_FEATURES,
        precision: str = "auto",
        device: str = "auto",
        n_jobs: int | None = None,
        random_state: int | None = 0,
    ) -> None:
        self.hidden = hidden
        self.alpha = alpha
        self.learning_rate = learning_rate
        self.batch_rows = batch_rows
        self.max_epochs = max_epochs
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.tol = tol
        self.max_features = max_features
        self.precision = precision
        self.device = device
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPHead:
        """Fit on ``(X, y)``; ``sample_weight`` weighs each row's loss."""
        self._check_params()
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64], ensure_min_samples=2)
        check_classification_targets(y)
        classes, y_idx = np.unique(y, return_inverse=True)
        weights = _check_sample_weight(sample_weight, X, dtype=np.float64)
        seed = _seed(self.random_state)
        val = self._validation_rows(y_idx, np.random.default_rng(seed))
        everything = [np.arange(len(y_idx))]
        fitted = _fit_batch(
            self, X, y_idx, len(classes), everything, [self.alpha], weights, val, seed
        )
        self.classes_ = classes
        _store_fit(self, fitted, 0)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (softmax of the output layer)."""
        check_is_fitted(self, "coefs_")
        X = validate_data(self, X, reset=False, dtype=[np.float32, np.float64])
        return _numpy_predict_proba(self, X)

    def predict(self, X: Any) -> np.ndarray:
        """Most probable class."""
        proba = self.predict_proba(X)  # checks that the head is fitted
        return self.classes_[proba.argmax(axis=1)]


def _seed(random_state: Any) -> int:
    if random_state is None:
        return 0
    if isinstance(random_state, (int, np.integer)):
        return int(random_state)
    raise ValueError(f"random_state must be None or an integer, got {random_state!r}")


def _kept_width(width: int, max_features: int, row_sets: Sequence[np.ndarray]) -> int:
    """Columns the fits train on: the width, or ``max_features`` principal directions when
    wider, and never more than the smallest fit's centred rows span (``rows - 1``): beyond
    that the directions carry no variance, only cost."""
    span = max(1, min(len(r) for r in row_sets) - 1)
    return width if width <= min(max_features, span) else min(max_features, span)


@dataclass
class _Fitted:
    """Numpy results of :func:`_fit_batch`, one entry per fit."""

    preps: list[_Prep]  # one per training-row set (group)
    group: np.ndarray
    coefs: list[np.ndarray]  # W1 (F, p, h), W2 (F, h, K)
    intercepts: list[np.ndarray]
    epochs: np.ndarray
    best: np.ndarray
    held_out: list[np.ndarray] | None = None  # predicted class index per fit's held-out rows


def _fit_batch(
    est: Any,
    X: np.ndarray,
    y_idx: np.ndarray,
    n_classes: int,
    row_sets: Sequence[np.ndarray],
    alphas: Sequence[float],
    weights: np.ndarray,
    val: np.ndarray,
    seed: int,
    held_out: Sequence[np.ndarray] | None = None,
) -> _Fitted:
    """Fit one MLP per (row set, alpha) pair, all in one batch; optionally predict each
    row set's ``held_out`` rows with its fits."""
    width = _kept_width(X.shape[1], est.max_features, row_sets)
    work = float(len(y_idx)) * width * est.hidden * len(row_sets) * len(alphas)
    with _Session(est.device, est.n_jobs, work) as session:
        torch = session.torch
        generator = torch.Generator().manual_seed(seed)
        rows = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32), device=session.device)
        with session.decomposition_threads():
            preps = [
                _prepare(rows, torch.as_tensor(r, device=session.device), width, generator, torch)
                for r in row_sets
            ]
        inputs = torch.stack([prep.apply(rows) for prep in preps])
        G, A, n = len(row_sets), len(alphas), len(y_idx)
        group = np.repeat(np.arange(G), A)
        train = np.zeros((G * A, n), dtype=np.float32)
        for g, r in enumerate(row_sets):
            train[g * A : (g + 1) * A, r] = weights[r]
        val_t = torch.as_tensor(val, device=session.device)[None, :] & torch.as_tensor(
            train > 0, device=session.device
        )
        if bool((val_t.sum(dim=1) == 0).any()):
            val_t[:] = False  # a fit without validation rows: no early stopping for any
        plan = _Plan(
            inputs=inputs,
            y=torch.as_tensor(y_idx, device=session.device),
            group=torch.as_tensor(group, device=session.device),
            train=torch.as_tensor(train, device=session.device),
            val=val_t,
            bf16=_use_bf16(est.precision, session.device, torch),
            alpha=torch.as_tensor(
                np.tile(np.asarray(alphas, dtype=np.float32), G), device=session.device
            ),
        )
        params, epochs, best = _train(
            plan, hidden=est.hidden, n_classes=n_classes, est=est, generator=generator, torch=torch
        )
        predictions = None
        if held_out is not None:
            predictions = []
            with torch.no_grad():
                for f in range(G * A):
                    part = torch.as_tensor(held_out[group[f]], device=session.device)
                    one = [p[f : f + 1] for p in params]
                    logits = _logits(inputs[group[f]][part][None], one, torch)[0]
                    predictions.append(logits.argmax(dim=1).cpu().numpy())
        out = [p.detach().cpu().numpy() for p in params]
        return _Fitted(
            preps=[
                _Prep(
                    prep.mean.cpu().numpy(),
                    prep.scale.cpu().numpy(),
                    None if prep.components is None else prep.components.cpu().numpy(),
                )
                for prep in preps
            ],
            group=group,
            coefs=[out[0], out[2]],
            intercepts=[out[1], out[3]],
            epochs=epochs.cpu().numpy(),
            best=best.cpu().numpy(),
            held_out=predictions,
        )


def _store_fit(head: MLPHead, fitted: _Fitted, f: int) -> None:
    prep = fitted.preps[fitted.group[f]]
    head.mean_, head.scale_, head.components_ = prep.mean, prep.scale, prep.components
    head.coefs_ = [fitted.coefs[0][f], fitted.coefs[1][f]]
    head.intercepts_ = [fitted.intercepts[0][f], fitted.intercepts[1][f]]
    head.n_iter_ = int(fitted.epochs[f])
    head.best_validation_score_ = float(fitted.best[f])


class MLPHeadCV(PredictsWithRefit, _MLPParams, ClassifierMixin, BaseEstimator):
    """:class:`MLPHead` choosing ``alpha`` by cross-validation, every (fold, alpha) fit trained
    in one batch (module docstring).

    Args:
        alphas: L2 strengths to try.
        cv: Folds: an int (stratified, shuffled; grouped when ``fit`` gets ``groups``), a
            splitter, or an iterable of (train, test) index pairs.
        scoring: ``"accuracy"``, ``"balanced_accuracy"`` or ``"f1_macro"``.
        Others: As for :class:`MLPHead`.

    Attributes:
        best_params_ (``{"alpha"}``), best_score_, best_index_, cv_results_, n_splits_,
        best_estimator_ (the refit, a fitted :class:`MLPHead`), classes_.
    """

    refit_methods = ("predict", "predict_proba")

    def __init__(
        self,
        hidden: int = 256,
        *,
        alphas: Sequence[float] = (1e-4, 1e-2, 1.0),
        cv: Any = 5,
        scoring: str = "accuracy",
        learning_rate: float = 3e-3,
        batch_rows: int = _FIT_BATCH,
        max_epochs: int = 200,
        early_stopping: bool = True,
        validation_fraction: float = 0.1,
        patience: int = 10,
        tol: float = 1e-4,
        max_features: int = _MAX_FEATURES,
        precision: str = "auto",
        device: str = "auto",
        n_jobs: int | None = None,
        random_state: int | None = 0,
    ) -> None:
        self.hidden = hidden
        self.alphas = alphas
        self.cv = cv
        self.scoring = scoring
        self.learning_rate = learning_rate
        self.batch_rows = batch_rows
        self.max_epochs = max_epochs
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.tol = tol
        self.max_features = max_features
        self.precision = precision
        self.device = device
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(self, X: Any, y: Any, groups: Any = None, sample_weight: Any = None) -> MLPHeadCV:
        """Score every alpha by CV on ``(X, y)``, refit the best on all of it."""
        self._check_params()
        alphas = [float(a) for a in self.alphas]
        if not alphas or min(alphas) < 0:
            raise ValueError(f"alphas must hold numbers >= 0, got {self.alphas!r}")
        score = scorer(self.scoring)
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64], ensure_min_samples=2)
        check_classification_targets(y)
        classes, y_idx = np.unique(y, return_inverse=True)
        weights = _check_sample_weight(sample_weight, X, dtype=np.float64)
        folds = _splits(self.cv, X, y_idx, groups, self.random_state)
        seed = _seed(self.random_state)
        val = self._validation_rows(y_idx, np.random.default_rng(seed))
        fitted = _fit_batch(
            self,
            X,
            y_idx,
            len(classes),
            [train for train, _ in folds],
            alphas,
            weights,
            val,
            seed,
            held_out=[test for _, test in folds],
        )
        table = np.array(
            [
                [
                    score(y_idx[test], fitted.held_out[f * len(alphas) + a])
                    for f, (_, test) in enumerate(folds)
                ]
                for a in range(len(alphas))
            ]
        )
        means = table.mean(axis=1)
        best = int(np.argmax(means))  # equal scores: the first alpha given
        self._store(alphas, table, best)
        refit = MLPHead(**{k: getattr(self, k) for k in _REFIT_KEYS}, alpha=alphas[best])
        self.best_estimator_ = refit.fit(X, y, sample_weight=sample_weight)
        self.classes_ = classes
        return self

    def _store(self, alphas: list[float], table: np.ndarray, best: int) -> None:
        store_search(self, [{"alpha": a} for a in alphas], table, best)


_REFIT_KEYS = (
    "hidden",
    "learning_rate",
    "batch_rows",
    "max_epochs",
    "early_stopping",
    "validation_fraction",
    "patience",
    "tol",
    "max_features",
    "precision",
    "device",
    "n_jobs",
    "random_state",
)
