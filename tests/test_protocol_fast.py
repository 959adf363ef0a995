"""``protocol.forward_header_pairs`` (one pass over the client's lines since the fourth session)
against the previous two-pass implementation, copied here verbatim as the reference."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import protocol as P


def old_forward_header_pairs(src, *, remote_ip, base, forwarded, trust_forwarded):
    items = src if isinstance(src, list) else list(src)
    drop = P.REQUEST_DROP
    conn = [v for n, v in items if n.lower() == "connection"]
    if conn:
        drop = drop | P.connection_tokens(conn)
    out = []
    client_xff = None
    for name, value in items:
        lname = name.lower()
        if lname in drop:
            continue
        if lname.startswith("x-forwarded-") or lname == "forwarded":
            if lname == "x-forwarded-for" and trust_forwarded:
                client_xff = f"{client_xff}, {value}" if client_xff else value
            continue
        out.append((name, value))
    if forwarded:
        proto, _, hostport = base.partition("://")
        if ":" in hostport.rsplit("]", 1)[-1]:
            port = hostport.rsplit(":", 1)[1]
        else:
            port = "443" if proto == "https" else "80"
        out += (("X-Forwarded-For", P.forwarded_for(client_xff, remote_ip)), ("X-Forwarded-Proto", proto),
                ("X-Forwarded-Host", hostport), ("X-Forwarded-Port", port))
    out.append(("Via", "1.1 trino-gateway"))
    return out


NAMES = st.sampled_from(["Host", "Connection", "connection", "Keep-Alive", "X-Trino-User", "x-trino-user",
                         "X-Forwarded-For", "x-forwarded-for", "X-Forwarded-Host", "Forwarded", "TE",
                         "Accept-Encoding", "Content-Length", "Expect", "X-Custom", "Upgrade", "Via"])
CONN_VALUES = st.sampled_from(["keep-alive", "close", "Keep-Alive, Upgrade", "x-custom", "X-Trino-User, te",
                               "x-forwarded-for", " , ", "", "X-Custom,keep-alive"])
VALUES = st.one_of(CONN_VALUES, st.sampled_from(["1.2.3.4", "a, b", "alice", "gzip", "100-continue"]))


@given(st.lists(st.tuples(NAMES, VALUES), max_size=10), st.booleans(), st.booleans(),
       st.sampled_from(["http://gw:8080", "https://gw", "https://[::1]:8443", "http://gw"]))
@settings(max_examples=1500, deadline=None)
def test_forward_header_pairs_gives_what_the_two_pass_version_gave(pairs, forwarded, trust, base) -> None:
    kw = dict(remote_ip="10.0.0.9", base=base, forwarded=forwarded, trust_forwarded=trust)
    assert P.forward_header_pairs(pairs, **kw) == old_forward_header_pairs(pairs, **kw)
    assert P.forward_header_pairs(iter(pairs), **kw) == old_forward_header_pairs(pairs, **kw)


def test_a_line_the_connection_header_names_is_not_forwarded() -> None:
    pairs = [("Connection", "keep-alive, X-Custom"), ("X-Custom", "1"), ("X-Trino-User", "a"),
             ("X-Forwarded-For", "1.1.1.1"), ("Connection", "x-forwarded-for")]
    out = P.forward_header_pairs(pairs, remote_ip="10.0.0.9", base="http://gw", forwarded=True,
                                 trust_forwarded=True)
    assert ("X-Custom", "1") not in out and ("X-Trino-User", "a") in out
    assert ("X-Forwarded-For", "10.0.0.9") in out   # the listed client line is dropped too
