"""A classifier that predicts class names: an index-predicting classifier plus its names.

The heads of a sweep are trained on class indices (``y`` holds ``0 .. n_classes - 1``), and
the names those indices stand for used to live only in the saved head's sidecar: a head loaded
with ``joblib.load`` predicted integers. :class:`LabelledClassifier` carries the names inside
the estimator itself, so ``joblib.load("best_head.joblib").predict(X)`` gives names, and
``predict_proba``'s columns follow ``classes_``, which are names too.

It follows scikit-learn's estimator contract (``__init__`` only stores its parameters, fitted
state ends in ``_``, :func:`sklearn.base.clone` works), so it can also be fitted like any
classifier: ``LabelledClassifier(LogisticRegression(), class_names=["ant", "bee"]).fit(X, y)``
with ``y`` holding names. :meth:`LabelledClassifier.from_fitted` wraps a classifier that is
already fitted on indices, without fitting it again.

Nothing here imports torch or featurestore.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.utils import get_tags
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d

__all__ = ["LabelledClassifier"]


def _inner_has(method: str) -> Any:
    """``available_if`` check: the (fitted, else unfitted) inner classifier has ``method``."""

    def check(self: LabelledClassifier) -> bool:
        inner = getattr(self, "estimator_", None)
        if inner is None:
            inner = self.estimator if self.estimator is not None else LogisticRegression()
        return hasattr(inner, method)

    return check


class LabelledClassifier(MetaEstimatorMixin, ClassifierMixin, BaseEstimator):
    """Predicts class names with an inner classifier that is trained on class indices.

    Parameters:
        estimator: The inner classifier (default: ``LogisticRegression()``). :meth:`fit` fits a
            clone of it on the indices of ``y``'s labels in ``class_names``.
        class_names: The names, in index order: index ``i`` stands for ``class_names[i]``.
            ``None``: the sorted distinct labels of :meth:`fit`'s ``y``.

    Attributes:
        estimator_: The fitted inner classifier (it predicts indices).
        class_names_: The names as an array, in index order.
        classes_: The names of the classes the inner classifier knows (a name for each of its
            ``classes_``, in its order); the columns of :meth:`predict_proba` and
            :meth:`decision_function` follow it.
        n_features_in_: Width of the rows it was fitted on.
    """

    def __init__(self, estimator: Any = None, class_names: Sequence[Any] | None = None) -> None:
        self.estimator = estimator
        self.class_names = class_names

    @classmethod
    def from_fitted(cls, estimator: Any, class_names: Sequence[Any]) -> LabelledClassifier:
        """Wrap ``estimator``, already fitted on indices into ``class_names``, without refitting.

        Raises:
            ValueError: ``estimator`` is not fitted, or it knows a class that is not an index
                into ``class_names``.
        """
        check_is_fitted(estimator)
        wrapped = cls(estimator=estimator, class_names=list(class_names))
        wrapped.estimator_ = estimator
        wrapped._adopt(np.asarray(list(class_names)))
        return wrapped

    def fit(self, X: Any, y: Any, **fit_params: Any) -> LabelledClassifier:
        """Fit a clone of ``estimator`` on ``X`` and the indices of ``y``'s labels.

        Raises:
            ValueError: ``y`` holds a label that is not in ``class_names``.
        """
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if self.class_names is None:
            names = np.unique(y)
        else:
            names = np.asarray(list(self.class_names))
            unknown = sorted({str(v) for v in np.setdiff1d(y, names)})
            if unknown:
                raise ValueError(f"labels {unknown[:5]} are not in class_names {list(names)[:10]}")
        order = np.argsort(names, kind="stable")
        index = order[np.searchsorted(names[order], y)]
        inner = LogisticRegression() if self.estimator is None else self.estimator
        self.estimator_ = clone(inner).fit(X, index, **fit_params)
        self._adopt(names)
        return self

    def _adopt(self, names: np.ndarray) -> None:
        """Set the fitted names from ``estimator_``'s classes (indices into ``names``)."""
        known = np.asarray(self.estimator_.classes_)
        if known.dtype.kind not in "iu" or (
            len(known) and (known.min() < 0 or known.max() >= len(names))
        ):
            raise ValueError(
                f"the classifier knows classes {known.tolist()[:10]}, which are not indices "
                f"into {len(names)} class names"
            )
        self.class_names_ = names
        self.classes_ = names[known]
        n_features = getattr(self.estimator_, "n_features_in_", None)
        if n_features is not None:
            self.n_features_in_ = n_features

    def _names(self, index: np.ndarray) -> np.ndarray:
        return self.class_names_[np.asarray(index, dtype=np.intp)]

    def predict(self, X: Any) -> np.ndarray:
        """The predicted class name of each row."""
        check_is_fitted(self, "estimator_")
        return self._names(self.estimator_.predict(X))

    @available_if(_inner_has("predict_proba"))
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``."""
        check_is_fitted(self, "estimator_")
        return self.estimator_.predict_proba(X)

    @available_if(_inner_has("predict_log_proba"))
    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log of :meth:`predict_proba`."""
        check_is_fitted(self, "estimator_")
        return self.estimator_.predict_log_proba(X)

    @available_if(_inner_has("decision_function"))
    def decision_function(self, X: Any) -> np.ndarray:
        """The inner classifier's decision scores (columns in the order of ``classes_``)."""
        check_is_fitted(self, "estimator_")
        return self.estimator_.decision_function(X)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        inner = LogisticRegression() if self.estimator is None else self.estimator
        inner_tags = get_tags(inner)
        tags.input_tags = inner_tags.input_tags
        tags.classifier_tags = inner_tags.classifier_tags
        return tags
