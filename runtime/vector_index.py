"""Unit vectors of one kind (a semantic cache's shape bucket) and the nearest of them.

The semantic cache compares a conversation's embedding with those of the cached ones
in the same bucket (runtime/semantic_cache.py): with every vector normalised, cosine
similarity is a dot product, and a lookup one matrix-vector product.

    >>> rows = Rows()
    >>> rows.add("a", unit([1.0, 0.0]))
    True
    >>> rows.nearest(unit([1.0, 0.1]))[0][0]
    'a'
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]


def unit(values: Sequence[float] | Vector) -> Vector | None:
    """``values`` as a float32 vector of length 1; None for one that cannot be (all zero,
    not finite), which is compared with nothing."""
    vector = np.asarray(values, dtype=np.float32)
    norm = float(np.linalg.norm(vector))
    if vector.ndim != 1 or not vector.size or not np.isfinite(norm) or norm == 0.0:
        return None
    normalised: Vector = vector / np.float32(norm)
    return normalised


class Rows:
    """Entry keys and their unit vectors, as the rows of one float32 matrix with room for
    a quarter more (``nbytes`` counts it all, for the cache's byte budget): a quarter, not
    doubling, so that the cache's budget holds vectors rather than room, and a matrix
    that grows past it evicts a fifth of its bucket, not half. A row removed is filled by
    the last one. All vectors of one ``Rows``
    are one embedding model's (the bucket says which), so of one ``width``: one of
    another is refused rather than compared."""

    def __init__(self) -> None:
        self._matrix: Vector | None = None
        self._keys: list[str] = []
        self._rows: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    @property
    def width(self) -> int | None:
        """The vectors' length; None while there are none."""
        return self._matrix.shape[1] if self._matrix is not None else None

    @property
    def nbytes(self) -> int:
        """The bytes of the matrix, its free rows too."""
        return self._matrix.nbytes if self._matrix is not None else 0

    def add(self, key: str, vector: Vector) -> bool:
        """Keep ``vector`` for ``key`` (replacing its own); False if of another width."""
        if self.width not in (None, vector.shape[0]):
            return False
        row = self._rows.get(key)
        if row is None:
            row = len(self._keys)
            if self._matrix is None or row == self._matrix.shape[0]:
                self._resize(_room(row + 1), vector.shape[0])
            self._keys.append(key)
            self._rows[key] = row
        assert self._matrix is not None
        self._matrix[row] = vector
        return True

    def remove(self, key: str) -> None:
        row = self._rows.pop(key, None)
        if row is None or self._matrix is None:
            return
        last = len(self._keys) - 1
        moved = self._keys.pop()
        if row != last:  # the last row fills the hole
            self._keys[row] = moved
            self._rows[moved] = row
            self._matrix[row] = self._matrix[last]
        # Given back as the bucket empties: the largest it ever was is not what it holds.
        if not self._keys:
            self._matrix = None
        elif len(self._keys) <= self._matrix.shape[0] // 2:
            self._resize(_room(len(self._keys)), self._matrix.shape[1])

    def _resize(self, rows: int, width: int) -> None:
        """A matrix of ``rows`` rows (a copy: a view would hold on to the old one)."""
        resized = np.zeros((rows, width), dtype=np.float32)
        kept = len(self._keys)
        if self._matrix is not None and kept:
            resized[:kept] = self._matrix[:kept]
        self._matrix = resized

    def nearest(self, vector: Vector, count: int = 1) -> list[tuple[str, float]]:
        """The ``count`` keys whose vectors are closest to ``vector``, nearest first, and
        their cosine similarities."""
        if not self._keys or self._matrix is None or self._matrix.shape[1] != vector.shape[0]:
            return []
        return _best(self._keys, self._matrix[:len(self._keys)] @ vector, count)


def _room(rows: int) -> int:
    """The rows of a matrix made for ``rows`` vectors: a quarter more (none for fewer
    than four, as a bucket a key often holds one)."""
    return rows + rows // 4


def nearest_of(stored: Iterable[tuple[str, bytes]], vector: Vector,
               count: int = 1) -> list[tuple[str, float]]:
    """The ``count`` nearest of vectors stored as float32 bytes (Redis' hash of a bucket):
    those of another length (a model that changed under the same name) are passed over."""
    width = vector.shape[0] * 4
    keys: list[str] = []
    blobs: list[bytes] = []
    for key, blob in stored:
        if len(blob) == width:
            keys.append(key)
            blobs.append(blob)
    if not keys:
        return []
    matrix = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(keys), -1)
    return _best(keys, matrix @ vector, count)


def _best(keys: Sequence[str], scores: Vector, count: int) -> list[tuple[str, float]]:
    """The ``count`` best scores' keys, best first (of equal scores, the first row)."""
    order = np.argsort(-scores, kind="stable")[:count]
    return [(keys[int(row)], float(scores[row])) for row in order]
