"""Routing-token MACs from precomputed HMAC pads (gateway/routing/tokens.py) against the
standard library's ``hmac.digest``, which the previous implementation called for every MAC."""
from __future__ import annotations

import base64
import copy
import hmac
import pickle

from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from gateway.routing.tokens import TokenKeys, key_id


def _old_mac(key: bytes, backend: str, kind: str, scope: str) -> str:
    msg = f"{backend}\x00{kind}\x00{scope}".encode()
    return base64.urlsafe_b64encode(hmac.digest(key, msg, "sha256")[:12]).rstrip(b"=").decode("ascii")


def _old_token(key: bytes, backend: str, kind: str, scope: str) -> str:
    name = base64.urlsafe_b64encode(backend.encode()).rstrip(b"=").decode("ascii")
    return ".".join((key_id(key), name, _old_mac(key, backend, kind, scope)))


TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(st.binary(min_size=16, max_size=200), TEXT, st.sampled_from(["query", "spool", "oauth"]), TEXT)
@settings(max_examples=500, deadline=None)
@example(b"k" * 64, "adhoc-1", "query", "20240101_123456_00001_abcde")    # exactly one block
@example(b"k" * 65, "adhoc-1", "query", "20240101_123456_00001_abcde")    # hashed first
@example(bytes(range(256)) * 2, "é", "spool", "\x00")
def test_tokens_are_those_of_hmac_digest(key: bytes, backend: str, kind: str, scope: str) -> None:
    assume(key != b"p" * 16)
    keys = TokenKeys(key)
    token = keys.encode(backend, kind, scope)
    assert token == _old_token(key, backend, kind, scope)
    assert TokenKeys(b"p" * 16, [key])._verify(token, kind, scope) == backend   # a previous key


def test_each_key_signs_with_its_own_pads() -> None:
    k1, k2 = b"a" * 32, b"b" * 100
    keys = TokenKeys(k1, [k2])
    assert keys._mac(k1, "b", "query", "q") == _old_mac(k1, "b", "query", "q")
    assert keys._mac(k2, "b", "query", "q") == _old_mac(k2, "b", "query", "q")
    assert keys._mac(k1, "b", "query", "q") == keys._mac(k1, "b", "query", "q")   # pads not consumed


def test_keys_survive_pickling_and_copying() -> None:
    keys = TokenKeys(b"a" * 32, [b"b" * 40])
    token = keys.encode("adhoc-1", "query", "q1")
    for other in (pickle.loads(pickle.dumps(keys)), copy.deepcopy(keys), copy.copy(keys)):
        assert (other.current, other.previous) == (keys.current, keys.previous)
        assert other.verify(token, "query", "q1") == "adhoc-1"
        assert other.encode("adhoc-1", "query", "q1") == token


def test_a_full_token_cache_drops_its_older_half_not_everything(monkeypatch):
    """Beyond the cache size, clearing everything made every in-flight query pay an HMAC at
    once; the older half goes instead, and what is still in use comes back at its next miss."""
    from gateway.routing import tokens as T
    monkeypatch.setattr(T, "_CACHE_MAX", 8)
    cache: dict[str, str] = {}
    for i in range(8):
        T.remember(cache, f"k{i}", str(i))
    assert len(cache) == 8
    T.remember(cache, "k8", "8")
    assert list(cache) == ["k4", "k5", "k6", "k7", "k8"]
    keys = T.TokenKeys.from_text("t" * 32, [])
    tokens = [keys.encode("b1", "query", f"q{i}") for i in range(20)]
    assert [keys.verify(t, "query", f"q{i}") for i, t in enumerate(tokens)] == ["b1"] * 20
    assert len(keys._encoded) <= 8 and len(keys._verified) <= 8
