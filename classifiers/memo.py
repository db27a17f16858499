"""A one-entry memo keyed by array content, for results that the next call often asks for
again (a linear head's basis for the next head on the same rows; an RBF head's kernel for its
decision values after its predictions). numpy only."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

__all__ = ["LastResult", "content_key"]


def content_key(array: np.ndarray) -> tuple[str, tuple[int, ...], bytes]:
    """dtype, shape and a BLAKE2 digest of the bytes of a C-contiguous ``array``."""
    digest = hashlib.blake2b(memoryview(array).cast("B"), digest_size=16).digest()
    return array.dtype.str, array.shape, digest


class LastResult:
    """The last value made, and the key it was made for; thread-safe (one maker at a time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: Hashable | None = None
        self._value: Any = None

    def get(
        self,
        key: Hashable,
        make: Callable[[], Any],
        keep: Callable[[Any], bool] = lambda value: True,
    ) -> Any:
        """The kept value when ``key`` equals the last one's; else ``make()``, kept when
        ``keep`` says so (the previous value is dropped first, so both are never held)."""
        with self._lock:
            if self._key is not None and self._key == key:
                return self._value
            self._key = self._value = None
            value = make()
            if keep(value):
                self._key, self._value = key, value
            return value
