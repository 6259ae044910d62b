"""Adapter-delta codec: manifest, L2 clipping, weighting, stochastic rounding to Z/2^k.

A site turns its adapter delta (a dict of float arrays) into one integer vector mod 2^k:

1. flatten in the order of a :class:`Manifest` (names, shapes, dtypes; both sides check it);
2. clip to an L2 bound ``clip_norm``;
3. multiply by the site's weight (at most ``max_weight``);
4. divide by the grid step ``scale`` and round stochastically (unbiased) to an integer;
5. reduce mod 2^k (two's complement).

The server sums such vectors mod 2^k and :func:`decode` lifts the sum to the centred range
``[-2^(k-1), 2^(k-1))`` and multiplies by ``scale``. :func:`choose_modulus_bits` picks the
smallest k for which the sum of ``n_sites`` vectors cannot wrap, and
:func:`decoding_error_bound` states how far the decoded sum can be from the plaintext
weighted sum of the clipped deltas.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DecodingErrorBound",
    "Manifest",
    "ManifestError",
    "TensorSpec",
    "choose_modulus_bits",
    "clip_l2",
    "decode",
    "decoding_error_bound",
    "encode",
    "flatten",
    "ring_dtype",
    "ring_reduce",
]

logger = logging.getLogger(__name__)

_FLOAT_DTYPES = ("float16", "float32", "float64")
_MANIFEST_VERSION = 1
#: Grid values must stay below 2^52 so that float64 rounding is exact to well below one step.
_MAX_GRID = float(2**52)
#: Relative slack for float64 arithmetic in the error bound (a few ulps per operation).
_FLOAT_SLACK = 2.0**-48


class ManifestError(ValueError):
    """A delta, vector or manifest does not match the manifest it is checked against."""


# ----------------------------------------------------------------------------- ring helpers


#: the unsigned dtypes a ring vector travels and is summed in, narrowest first
_RING_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.uint32),
                np.dtype(np.uint64))


def ring_dtype(modulus_bits: int) -> np.dtype[Any]:
    """Return the narrowest unsigned dtype holding values mod 2^k: what a ring vector uses.

    ``uint8`` for k <= 8, ``uint16`` for k <= 16, ``uint32`` for k <= 32, else ``uint64``
    (little-endian, the native order of every platform Confide runs on). A sum of such
    vectors may be taken in the same dtype: its arithmetic wraps mod 2^(8 * itemsize), which
    2^k divides, so the result reduced mod 2^k (:func:`ring_reduce`) is exact.
    """
    if type(modulus_bits) is not int or not 1 <= modulus_bits <= 64:
        raise ValueError(f"`modulus_bits` must be an int in [1, 64], got {modulus_bits!r}")
    return next(d for d in _RING_DTYPES if modulus_bits <= 8 * d.itemsize)


def ring_reduce(vec: np.ndarray, modulus_bits: int) -> np.ndarray:
    """Reduce a ring vector mod 2^k in place (no-op when k is the dtype's width)."""
    dtype = ring_dtype(modulus_bits)
    if modulus_bits < 8 * dtype.itemsize:
        np.bitwise_and(vec, dtype.type((1 << modulus_bits) - 1), out=vec)
    return vec


# ----------------------------------------------------------------------------- manifest


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ManifestError(f"tensor name must be a non-empty str, got {name!r}")
    return name


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one tensor of the adapter delta."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not isinstance(self.shape, tuple) or any(
            type(d) is not int or d < 0 for d in self.shape
        ):
            raise ManifestError(
                f"`shape` of tensor {self.name!r} must be a tuple of ints >= 0, got {self.shape!r}"
            )
        if self.dtype not in _FLOAT_DTYPES:
            raise ManifestError(
                f"`dtype` of tensor {self.name!r} must be one of {_FLOAT_DTYPES}, "
                f"got {self.dtype!r}"
            )

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class Manifest:
    """Ordered list of the tensors of an adapter delta; the codec's contract.

    Both sides build or receive the manifest, and compare :meth:`digest` values before
    exchanging vectors.
    """

    tensors: tuple[TensorSpec, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.tensors, tuple) or not self.tensors:
            raise ManifestError("`tensors` must be a non-empty tuple of TensorSpec")
        seen: set[str] = set()
        for spec in self.tensors:
            if not isinstance(spec, TensorSpec):
                raise ManifestError(f"`tensors` must hold TensorSpec, got {spec!r}")
            if spec.name in seen:
                raise ManifestError(f"tensor {spec.name!r} appears twice in the manifest")
            seen.add(spec.name)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Manifest:
        """Build a manifest from a dict of arrays, in the dict's order."""
        return cls(
            tuple(
                TensorSpec(_check_name(name), tuple(int(d) for d in np.shape(a)), str(a.dtype))
                for name, a in arrays.items()
            )
        )

    @property
    def dim(self) -> int:
        """Length of the flattened vector."""
        return sum(spec.size for spec in self.tensors)

    @property
    def names(self) -> tuple[str, ...]:
        """Tensor names in order."""
        return tuple(spec.name for spec in self.tensors)

    def to_bytes(self) -> bytes:
        """Canonical serialisation: compact, key-sorted JSON in UTF-8."""
        body = {
            "version": _MANIFEST_VERSION,
            "tensors": [
                {"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in self.tensors
            ],
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse :meth:`to_bytes` output; rejects unknown versions and keys."""
        try:
            body = json.loads(bytes(data).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"manifest is not valid JSON: {exc}") from None
        if not isinstance(body, dict) or set(body) != {"version", "tensors"}:
            raise ManifestError("manifest must have exactly the keys 'tensors' and 'version'")
        if body["version"] != _MANIFEST_VERSION:
            raise ManifestError(f"manifest `version` must be 1, got {body['version']!r}")
        specs = []
        for entry in body["tensors"]:
            if not isinstance(entry, dict) or set(entry) != {"name", "shape", "dtype"}:
                raise ManifestError(f"manifest entry must have name/shape/dtype, got {entry!r}")
            if not isinstance(entry["shape"], list):
                raise ManifestError(f"`shape` of {entry['name']!r} must be a list")
            specs.append(TensorSpec(entry["name"], tuple(entry["shape"]), entry["dtype"]))
        manifest = cls(tuple(specs))
        if manifest.to_bytes() != bytes(data):
            raise ManifestError("manifest is not in canonical form")
        return manifest

    def digest(self) -> str:
        """SHA-256 hex digest of :meth:`to_bytes`."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def check_digest(self, digest: str) -> None:
        """Raise :class:`ManifestError` unless ``digest`` is this manifest's digest."""
        if digest != self.digest():
            raise ManifestError(
                f"manifest digest mismatch: expected {self.digest()}, got {digest!r}"
            )

    def check(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Raise :class:`ManifestError` naming the first tensor that does not match."""
        expected = self.names
        missing = [n for n in expected if n not in arrays]
        extra = [n for n in arrays if n not in set(expected)]
        if missing:
            raise ManifestError(f"tensor {missing[0]!r} is missing from the delta")
        if extra:
            raise ManifestError(f"tensor {extra[0]!r} is not in the manifest")
        for spec in self.tensors:
            arr = arrays[spec.name]
            if not isinstance(arr, np.ndarray):
                raise ManifestError(
                    f"tensor {spec.name!r} must be a numpy array, got {type(arr).__name__}"
                )
            if tuple(arr.shape) != spec.shape:
                raise ManifestError(
                    f"tensor {spec.name!r} has shape {tuple(arr.shape)}, manifest says {spec.shape}"
                )
            if str(arr.dtype) != spec.dtype:
                raise ManifestError(
                    f"tensor {spec.name!r} has dtype {arr.dtype}, manifest says {spec.dtype}"
                )


# ----------------------------------------------------------------------------- encode / decode


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"`{name}` must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be finite and > 0, got {value!r}")
    return float(value)


def flatten(delta: Mapping[str, np.ndarray], manifest: Manifest) -> np.ndarray:
    """Check ``delta`` against ``manifest`` and flatten it to one float64 vector.

    Raises
    ------
    ManifestError
        If a tensor is missing, extra, or of the wrong shape or dtype.
    ValueError
        If a tensor holds NaN or infinity (named).
    """
    manifest.check(delta)
    out = np.empty(manifest.dim, dtype=np.float64)
    offset = 0
    for spec in manifest.tensors:
        arr = delta[spec.name]
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"tensor {spec.name!r} holds NaN or infinity")
        out[offset : offset + spec.size] = arr.reshape(-1)
        offset += spec.size
    return out


def clip_l2(vec: np.ndarray, clip_norm: float) -> np.ndarray:
    """Return ``vec`` scaled down (if needed) so that its L2 norm is at most ``clip_norm``."""
    clip = _positive("clip_norm", clip_norm)
    norm = float(np.linalg.norm(vec))
    if norm <= clip:
        return vec
    return vec * (clip / norm)


def encode(
    delta: Mapping[str, np.ndarray],
    manifest: Manifest,
    *,
    clip_norm: float,
    weight: float,
    scale: float,
    modulus_bits: int,
    rng: np.random.Generator,
    max_weight: float | None = None,
) -> np.ndarray:
    """Encode a site's adapter delta as a vector mod 2^k.

    Parameters
    ----------
    delta : mapping of str to numpy.ndarray
        Float tensors matching ``manifest`` exactly (names, shapes, dtypes).
    manifest : Manifest
        Order and shapes of the flattened vector.
    clip_norm : float
        L2 bound C applied to the whole flattened delta.
    weight : float
        The site's aggregation weight w >= 0 (e.g. its number of examples).
    scale : float
        Grid step s: one integer unit stands for ``scale`` in the weighted delta.
    modulus_bits : int
        k; see :func:`choose_modulus_bits`.
    rng : numpy.random.Generator
        Source of the stochastic-rounding noise.
    max_weight : float, optional
        If given, ``weight`` must not exceed it (the bound ``k`` was chosen for).

    Returns
    -------
    numpy.ndarray
        ``floor(w * clip(delta) / s + U) mod 2^k`` with U uniform on [0, 1), of dtype
        :func:`ring_dtype` ``(k)`` and length ``manifest.dim``.
    """
    clip = _positive("clip_norm", clip_norm)
    step = _positive("scale", scale)
    dtype = ring_dtype(modulus_bits)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ValueError(f"`weight` must be a number, got {weight!r}")
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"`weight` must be finite and >= 0, got {weight!r}")
    if max_weight is not None and weight > _positive("max_weight", max_weight):
        raise ValueError(f"`weight` must be <= max_weight = {max_weight}, got {weight}")
    grid_max = clip * float(weight) / step
    if grid_max >= _MAX_GRID:
        raise ValueError(
            f"`scale` {step} is too fine for clip_norm * weight = {clip * weight}: "
            "grid values must stay below 2^52"
        )
    if 2.0 * (grid_max + 1.0) >= 2.0**modulus_bits:
        raise ValueError(
            f"`modulus_bits` {modulus_bits} cannot hold one site's values "
            f"(|q| <= {grid_max + 1:.0f}); see choose_modulus_bits"
        )
    vec = clip_l2(flatten(delta, manifest), clip)
    y = vec * (float(weight) / step)
    noise = rng.random(y.shape[0])
    q = np.floor(y + noise).astype(np.int64)
    return ring_reduce(q.view(np.uint64).astype(dtype, copy=False), modulus_bits)


def _centred_lift(vec: np.ndarray, modulus_bits: int) -> np.ndarray:
    if modulus_bits == 64:
        return vec.view(np.int64)
    signed = vec.astype(np.int64)
    high = signed >= (1 << (modulus_bits - 1))
    signed[high] -= 1 << modulus_bits
    return signed


def decode(
    sum_vec: np.ndarray,
    manifest: Manifest,
    *,
    scale: float,
    modulus_bits: int,
) -> dict[str, np.ndarray]:
    """Decode a sum of encoded vectors to float64 tensors (the weighted sum, not the mean).

    Parameters
    ----------
    sum_vec : numpy.ndarray
        Sum mod 2^k of encoded vectors, dtype :func:`ring_dtype` ``(k)``, length
        ``manifest.dim``.
    manifest : Manifest
        The manifest the vectors were encoded with.
    scale : float
        Grid step used by :func:`encode`.
    modulus_bits : int
        k used by :func:`encode`.

    Returns
    -------
    dict of str to numpy.ndarray
        float64 tensors in manifest order; divide by the total weight for the mean.
    """
    step = _positive("scale", scale)
    dtype = ring_dtype(modulus_bits)
    if not isinstance(sum_vec, np.ndarray) or sum_vec.dtype != dtype:
        raise ManifestError(
            f"sum vector must be a {dtype} array, got {getattr(sum_vec, 'dtype', type(sum_vec))}"
        )
    if sum_vec.shape != (manifest.dim,):
        raise ManifestError(
            f"sum vector has shape {sum_vec.shape}, manifest says ({manifest.dim},)"
        )
    if sum_vec.size and int(sum_vec.max()) >> modulus_bits:
        raise ManifestError(f"sum vector holds values >= 2^{modulus_bits}")
    flat = _centred_lift(sum_vec, modulus_bits).astype(np.float64) * step
    out: dict[str, np.ndarray] = {}
    offset = 0
    for spec in manifest.tensors:
        out[spec.name] = flat[offset : offset + spec.size].reshape(spec.shape)
        offset += spec.size
    return out


# ----------------------------------------------------------------------------- parameters


def _check_sizes(n_sites: object, dim: object) -> None:
    if type(n_sites) is not int or n_sites < 1:
        raise ValueError(f"`n_sites` must be an int >= 1, got {n_sites!r}")
    if type(dim) is not int or dim < 1:
        raise ValueError(f"`dim` must be an int >= 1, got {dim!r}")


def choose_modulus_bits(
    *, n_sites: int, clip_norm: float, max_weight: float, scale: float, dim: int
) -> int:
    """Smallest k such that the sum of ``n_sites`` encoded vectors cannot wrap mod 2^k.

    Each coordinate of a clipped delta is at most C in magnitude (whatever ``dim``), so a
    site's integer is at most ``floor(C * W / s) + 1`` in magnitude after stochastic
    rounding; the sum of n of them must lie in the centred range ``[-2^(k-1), 2^(k-1))``.

    Raises
    ------
    ValueError
        If an argument is out of range or no k <= 64 suffices.
    """
    _check_sizes(n_sites, dim)
    clip = _positive("clip_norm", clip_norm)
    weight = _positive("max_weight", max_weight)
    step = _positive("scale", scale)
    grid_max = clip * weight / step
    if grid_max >= _MAX_GRID:
        raise ValueError(f"`scale` {step} is too fine: clip_norm * max_weight / scale >= 2^52")
    per_site = math.floor(grid_max * (1.0 + _FLOAT_SLACK)) + 1
    total = n_sites * per_site
    bits = (2 * total + 1).bit_length()  # 2^(k-1) > total
    if bits > 64:
        raise ValueError(
            f"no modulus up to 2^64 holds {n_sites} sites with clip_norm * max_weight / scale "
            f"= {grid_max:.3g}; use a coarser `scale`"
        )
    return bits


@dataclass(frozen=True)
class DecodingErrorBound:
    """Bounds on ``decoded - sum_i w_i * clip(delta_i)``.

    Attributes
    ----------
    per_coordinate : float
        Rigorous bound on the absolute error of every coordinate.
    l2 : float
        Rigorous bound on the L2 norm of the error vector (``per_coordinate * sqrt(dim)``).
    l2_rms : float
        Root-mean-square L2 error of unbiased stochastic rounding, ``s/2 * sqrt(n * dim)``
        (an upper bound on the expected error norm; typical, not worst case).
    """

    per_coordinate: float
    l2: float
    l2_rms: float


def decoding_error_bound(
    *, n_sites: int, clip_norm: float, max_weight: float, scale: float, dim: int
) -> DecodingErrorBound:
    """Error bounds of decoding the sum of ``n_sites`` encoded vectors.

    Stochastic rounding moves each site's scaled coordinate by strictly less than one grid
    step s, so each coordinate of the decoded sum is within ``n * s`` of the exact weighted
    sum, plus float64 rounding on values of magnitude at most ``n * C * W`` (covered by a
    slack of ``n * C * W * 2^-48``).
    """
    _check_sizes(n_sites, dim)
    clip = _positive("clip_norm", clip_norm)
    weight = _positive("max_weight", max_weight)
    step = _positive("scale", scale)
    per_coordinate = n_sites * step + n_sites * clip * weight * _FLOAT_SLACK
    return DecodingErrorBound(
        per_coordinate=per_coordinate,
        l2=per_coordinate * math.sqrt(dim),
        l2_rms=0.5 * step * math.sqrt(n_sites * dim),
    )
