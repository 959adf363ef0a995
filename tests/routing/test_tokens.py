"""Routing tokens (gateway/routing/tokens.py): exact encode / verify / parse behaviour."""
from __future__ import annotations

import pytest

from gateway.routing.tokens import PREFIX, TokenError, TokenKeys, key_id, split_path

K1 = b"k" * 32
K2 = b"second-key-0123456789"
QID = "20240101_123456_00001_abcde"


def test_a_token_names_its_backend_and_verifies_for_its_own_scope():
    keys = TokenKeys(K1)
    tok = keys.encode("adhoc-1", "query", QID)
    assert keys.verify(tok, "query", QID) == "adhoc-1"
    kid, name, mac = tok.split(".")
    assert kid == key_id(K1) and len(kid) == 4
    assert name == "YWRob2MtMQ"          # base64url("adhoc-1"), unpadded
    assert len(mac) == 16                # 96 bits
    assert "/" not in tok and "?" not in tok and "#" not in tok and "%" not in tok


def test_the_same_inputs_give_the_same_token_in_every_process():
    assert TokenKeys(K1).encode("b", "spool", "s1") == TokenKeys(K1).encode("b", "spool", "s1")


@pytest.mark.parametrize("kind,scope", [("query", "20240101_123456_00002_abcde"), ("spool", QID),
                                        ("oauth", QID)])
def test_a_token_does_not_route_another_resource(kind, scope):
    keys = TokenKeys(K1)
    tok = keys.encode("adhoc-1", "query", QID)
    with pytest.raises(TokenError, match="not valid for this request"):
        keys.verify(tok, kind, scope)


def test_changing_any_character_of_a_token_is_refused():
    keys = TokenKeys(K1)
    tok = keys.encode("adhoc-1", "query", QID)
    refused = 0
    for i, ch in enumerate(tok):
        for repl in ("A", "z", "_", "."):
            if repl == ch:
                continue
            bad = tok[:i] + repl + tok[i + 1:]
            with pytest.raises(TokenError):
                keys.verify(bad, "query", QID)
            refused += 1
    assert refused >= 3 * len(tok)


def test_a_forged_backend_name_is_refused():
    keys = TokenKeys(K1)
    kid, _, mac = keys.encode("adhoc-1", "query", QID).split(".")
    forged = ".".join((kid, "ZXRsLTE", mac))   # "etl-1"
    with pytest.raises(TokenError):
        keys.verify(forged, "query", QID)


def test_rotation_previous_keys_still_verify_new_tokens_use_the_current_key():
    old = TokenKeys(K1)
    tok_old = old.encode("adhoc-2", "query", QID)
    rotated = TokenKeys(K2, [K1])
    assert rotated.verify(tok_old, "query", QID) == "adhoc-2"
    tok_new = rotated.encode("adhoc-2", "query", QID)
    assert tok_new.split(".")[0] == key_id(K2)
    with pytest.raises(TokenError, match="key this gateway does not have"):
        old.verify(tok_new, "query", QID)
    with pytest.raises(TokenError, match="key this gateway does not have"):
        TokenKeys(K2).verify(tok_old, "query", QID)   # the old key was dropped


@pytest.mark.parametrize("bad", ["", "abc", "a.b", "a.b.c.d", "....", "zzzz.!!.x"])
def test_malformed_tokens_are_refused(bad):
    with pytest.raises(TokenError):
        TokenKeys(K1).verify(bad, "query", QID)


def test_non_ascii_backend_names_round_trip():
    keys = TokenKeys(K1)
    assert keys.verify(keys.encode("clüster 1/ä", "spool", "x"), "spool", "x") == "clüster 1/ä"


def test_keys_must_be_long_enough_and_distinct():
    with pytest.raises(ValueError):
        TokenKeys(b"short")
    with pytest.raises(ValueError):
        TokenKeys(K1, [K1])
    with pytest.raises(ValueError):
        TokenKeys(K1, [b"short"])


def test_split_path():
    assert PREFIX == "/_r/"
    assert split_path("/_r/tok/v1/statement/executing/x/y/1") == ("tok", "/v1/statement/executing/x/y/1")
    assert split_path("/_r/tok/") == ("tok", "/")
    assert split_path("/v1/statement") is None
    assert split_path("/_r/tok") is None
    assert split_path("/_r//v1/x") is None


def test_remembered_answers_never_widen_what_a_token_routes():
    keys = TokenKeys(K1)
    tok = keys.encode("adhoc-1", "query", QID)
    for _ in range(3):   # the second and third answers come from memory
        assert keys.verify(tok, "query", QID) == "adhoc-1"
    with pytest.raises(TokenError):
        keys.verify(tok, "query", "20240101_123456_00009_abcde")
    with pytest.raises(TokenError):
        keys.verify(tok[:-1] + ("A" if tok[-1] != "A" else "B"), "query", QID)
    from gateway.routing.tokens import _CACHE_MAX
    for i in range(_CACHE_MAX + 1000):   # the memory is bounded
        keys.encode("b", "spool", f"s{i}")
    assert len(keys._encoded) <= _CACHE_MAX
