"""Shamir secret sharing: any t shares reconstruct, fewer do not."""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.secagg import SecAggError
from privacy.secagg.shamir import PRIME, SHARE_LEN, combine_shares, share_x, split_secret


@pytest.mark.parametrize("n,t", [(3, 2), (5, 3), (6, 4), (7, 7)])
def test_every_subset_of_size_t_reconstructs(n: int, t: int) -> None:
    secret = os.urandom(32)
    shares = split_secret(secret, threshold=t, xs=list(range(1, n + 1)))
    for subset in itertools.combinations(shares, t):
        assert combine_shares(list(subset), threshold=t) == secret
        for order in (list(subset), list(reversed(subset))):
            assert combine_shares(order, threshold=t) == secret


@pytest.mark.parametrize("n,t", [(3, 2), (5, 3), (6, 4)])
def test_every_subset_below_t_fails(n: int, t: int) -> None:
    secret = os.urandom(32)
    shares = split_secret(secret, threshold=t, xs=list(range(1, n + 1)))
    for subset in itertools.combinations(shares, t - 1):
        with pytest.raises(SecAggError):
            combine_shares(list(subset), threshold=t)
        # interpolating the t-1 shares as if they were enough gives garbage, not the secret
        try:
            assert combine_shares(list(subset), threshold=t - 1) != secret
        except SecAggError:
            pass


@settings(max_examples=40, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=64),
    n=st.integers(2, 9),
    data=st.data(),
)
def test_reconstruction_property(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    xs = data.draw(st.lists(st.integers(1, 2**64 - 1), min_size=n, max_size=n, unique=True))
    shares = split_secret(secret, threshold=t, xs=xs)
    assert [share_x(s) for s in shares] == xs
    assert all(len(s) == SHARE_LEN for s in shares)
    chosen = data.draw(st.permutations(shares))[:t]
    assert combine_shares(chosen, threshold=t) == secret


def test_known_answer_with_deterministic_coefficients() -> None:
    """f(x) = s + 5x over GF(p): shares are s + 5x, pinned byte for byte."""
    secret = (1234567).to_bytes(32, "big")
    shares = split_secret(secret, threshold=2, xs=[1, 2, 3], randbelow=lambda _: 5)
    ys = [int.from_bytes(s[10:], "big") for s in shares]
    assert ys == [1234572, 1234577, 1234582]
    assert shares[0][:10] == bytes([1, 32]) + (1).to_bytes(8, "big")
    assert combine_shares([shares[2], shares[0]], threshold=2) == secret


def test_tampered_share_does_not_reconstruct_the_secret() -> None:
    secret = os.urandom(32)
    shares = split_secret(secret, threshold=3, xs=[1, 2, 3, 4])
    bad = bytearray(shares[1])
    bad[-1] ^= 1
    try:
        assert combine_shares([shares[0], bytes(bad), shares[2]], threshold=3) != secret
    except SecAggError:
        pass


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s[:-1],  # truncated
        lambda s: bytes([2]) + s[1:],  # unknown version
        lambda s: s[:2] + bytes(8) + s[10:],  # x = 0
        lambda s: s[:10] + (PRIME).to_bytes(66, "big"),  # y out of the field
    ],
)
def test_malformed_shares_are_rejected(mutate) -> None:  # type: ignore[no-untyped-def]
    shares = split_secret(os.urandom(32), threshold=2, xs=[1, 2])
    with pytest.raises(SecAggError):
        combine_shares([mutate(shares[0]), shares[1]], threshold=2)


def test_duplicate_or_mixed_length_shares_are_rejected() -> None:
    a = split_secret(os.urandom(32), threshold=2, xs=[1, 2])
    b = split_secret(os.urandom(16), threshold=2, xs=[3, 4])
    with pytest.raises(SecAggError):
        combine_shares([a[0], a[0]], threshold=2)
    with pytest.raises(SecAggError):
        combine_shares([a[0], b[0]], threshold=2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"threshold": 0, "xs": [1, 2]}, "threshold"),
        ({"threshold": 3, "xs": [1, 2]}, "threshold"),
        ({"threshold": True, "xs": [1, 2]}, "threshold"),
        ({"threshold": 2, "xs": [1, 1]}, "distinct"),
        ({"threshold": 1, "xs": [0]}, "xs"),
        ({"threshold": 1, "xs": [2**64]}, "xs"),
    ],
)
def test_split_rejects_bad_parameters(kwargs: dict, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=match):
        split_secret(b"k" * 32, **kwargs)


@pytest.mark.parametrize("secret", [b"", b"x" * 65, "text"])
def test_split_rejects_bad_secrets(secret: object) -> None:
    with pytest.raises(ValueError, match="secret"):
        split_secret(secret, threshold=1, xs=[1])  # type: ignore[arg-type]
