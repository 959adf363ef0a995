"""The configuration loader: defaults, validation errors that name key and file, and the docs."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from gateway import config as C

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def _write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "gw.yaml"
    p.write_text(text)
    return str(p)


def test_defaults_without_a_file():
    cfg = C.load_config(None)
    assert cfg.server.port == 8080 and cfg.server.host == "0.0.0.0"
    assert cfg.store.url == "sqlite:///trino-gateway.db"
    assert cfg.routing.rules == ["rules/"] and cfg.backends == []


def test_empty_file_is_all_defaults(tmp_path):
    assert C.load_config(_write(tmp_path, "")).server.port == 8080


@pytest.mark.parametrize("text,needle", [
    ("server:\n  prot: 1\n", "unknown key 'server.prot'"),
    ("nope: 1\n", "unknown key 'nope'"),
    ("server:\n  port: eighty\n", "server.port: expected an integer"),
    ("server:\n  port: 70000\n", "server.port: 70000 is not a TCP port"),
    ("store:\n  historyRetention: 3 weeks\n", "store.historyRetention: expected a duration"),
    ("routing:\n  policy: fastest\n", "routing.policy: 'fastest' is not one of"),
    ("monitor:\n  type: jmx\n", "monitor.type"),
    ("backends:\n  - name: a\n", "backends[0]: missing required key(s) proxyTo"),
    ("backends:\n  - {name: a, proxyTo: 'ftp://x'}\n", "backends[0].proxyTo: expected an http:// or https:// URL"),
    ("backends:\n  - {name: a, proxyTo: 'http://x:1/path'}\n", "scheme://host:port only"),
    ("backends:\n  - {name: a, proxyTo: 'http://x:1'}\n  - {name: a, proxyTo: 'http://y:1'}\n", "duplicate backend name"),
    ("backends:\n  - {name: 'a b', proxyTo: 'http://x:1'}\n", "backends[0].name"),
    ("groups:\n  etl: {fallback: maybe}\n", "groups.etl.fallback"),
    ("auth:\n  users:\n    ops: {password: x, roles: [root]}\n", "unknown role 'root'"),
    ("server: [1, 2]\n", "server: expected a mapping"),
    ("server:\n  tls: {certFile: a.pem}\n", "certFile and keyFile go together"),
    ("store:\n  url: mysql://x\n", "store.url"),
    ("logging:\n  format: xml\n", "logging.format"),
    ("server: {port: 1\n", "invalid YAML"),
    ("routing:\n  tokenKey: short\n", "routing.tokenKey: a routing token key must be at least 16 bytes"),
    ("routing:\n  previousTokenKeys: [tiny]\n", "routing.previousTokenKeys[0]: a routing token key"),
    ("routing:\n  tokenKey: aaaaaaaaaaaaaaaaaaaa\n  previousTokenKeys: [aaaaaaaaaaaaaaaaaaaa]\n",
     "routing.previousTokenKeys: lists the same key twice"),
])
def test_bad_values_are_clear_errors_naming_key_and_file(tmp_path, text, needle):
    path = _write(tmp_path, text)
    with pytest.raises(C.ConfigError) as err:
        C.load_config(path)
    assert needle in str(err.value)
    assert path in str(err.value)


def test_env_substitution(tmp_path, monkeypatch):
    monkeypatch.setenv("GW_PORT_TEST_DB", "secret")
    cfg = C.load_config(_write(tmp_path, "store:\n  url: postgresql://u:${ENV:GW_PORT_TEST_DB}@h/db\n"))
    assert cfg.store.url == "postgresql://u:secret@h/db"
    with pytest.raises(C.ConfigError, match="environment variable GW_UNSET_X is not set"):
        C.load_config(_write(tmp_path, "store:\n  url: ${ENV:GW_UNSET_X}\n"))


@pytest.mark.parametrize("text,seconds", [("500ms", 0.5), ("5s", 5), ("1m", 60), ("24h", 86400), ("2d", 172800),
                                          (3, 3.0), ("1.5s", 1.5)])
def test_durations(text, seconds):
    assert C.parse_duration(text) == seconds


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(C.ConfigError, match="cannot read configuration"):
        C.load_config(str(tmp_path / "nope.yaml"))


def _loader_keys() -> dict[str, object]:
    keys: dict[str, object] = {}

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            if f.name == "source":
                continue
            if f.default is not dataclasses.MISSING:
                d = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                d = f.default_factory()  # type: ignore[misc]
            else:
                d = "required"
            if dataclasses.is_dataclass(d):
                walk(type(d), prefix + f.name + ".")
            else:
                keys[prefix + f.name] = d

    for section in ("server", "store", "routing", "monitor", "logging", "query"):
        walk(type(getattr(C.Config(), section)), section + ".")
    walk(C.GroupConfig, "groups.NAME.")
    keys.update({f"backends[].{k.split('.', 1)[1]}": v for k, v in _fields(C.BackendConfig).items()})
    walk(C.AuthConfig, "auth.")
    keys.update({f"auth.users.NAME.{k.split('.', 1)[1]}": v for k, v in _fields(C.UserConfig).items()})
    return keys


def _fields(cls: type) -> dict[str, object]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out["x." + f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out["x." + f.name] = f.default_factory()  # type: ignore[misc]
        else:
            out["x." + f.name] = "required"
    return out


def _doc_value(text: str) -> object:
    """Turn the doc's default column into the loader's value (durations to seconds)."""
    text = text.strip()
    if text == "required":
        return "required"
    inner = text.strip("`")
    if re.fullmatch(r"\d+(\.\d+)?(ms|s|m|h|d)", inner):
        return C.parse_duration(inner)
    return yaml.safe_load(inner)


def test_configuration_doc_lists_every_key_with_its_default():
    rows = re.findall(r"^\| `([^`]+)` \| ([^|]+) \|", DOC.read_text(), re.MULTILINE)
    documented = {k: _doc_value(v) for k, v in rows}
    loader = _loader_keys()
    assert set(documented) == set(loader), (
        f"missing from the doc: {sorted(set(loader) - set(documented))}; "
        f"not in the loader: {sorted(set(documented) - set(loader))}")
    for key, default in loader.items():
        assert documented[key] == default, f"{key}: doc says {documented[key]!r}, loader {default!r}"


def test_the_docs_complete_example_loads(monkeypatch):
    monkeypatch.setenv("GATEWAY_DB_PASSWORD", "x")
    monkeypatch.setenv("GATEWAY_SESSION_SECRET", "y")
    from gateway.admin.auth import hash_password
    monkeypatch.setenv("GATEWAY_OPS_PASSWORD_HASH", hash_password("z", iterations=1000))
    example = DOC.read_text().split("## A complete example", 1)[1]
    text = re.search(r"```yaml\n(.*?)```", example, re.DOTALL).group(1)
    cfg = C.config_from_dict(yaml.safe_load(text), "example")
    assert cfg.server.workers == 2 and cfg.groups["etl"].fallback == "none"


def test_relative_paths_in_a_file_resolve_against_its_folder(tmp_path, monkeypatch):
    # A service manager starts the gateway from another directory; the file means the same.
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "ca.pem").write_text("x")
    path = folder / "gw.yaml"
    path.write_text("server:\n  tls: {certFile: tls/c.pem, keyFile: /abs/k.pem}\n"
                    "  backendCaFile: ca.pem\n  stateDir: state\n"
                    "store:\n  url: sqlite:///data/gw.db\nrouting:\n  rules: [rules/, /abs/rules]\n")
    monkeypatch.chdir(tmp_path)
    cfg = C.load_config("etc/gw.yaml")           # a relative path to the file works too
    assert cfg.routing.rules == [f"{folder}/rules/", "/abs/rules"]
    assert cfg.server.tls.certFile == f"{folder}/tls/c.pem" and cfg.server.tls.keyFile == "/abs/k.pem"
    assert cfg.server.backendCaFile == f"{folder}/ca.pem" and cfg.server.stateDir == f"{folder}/state"
    assert cfg.store.url == f"sqlite:///{folder}/data/gw.db"
    assert cfg.rules_configured


def test_defaults_not_written_in_the_file_stay_relative_to_the_working_directory(tmp_path):
    cfg = C.load_config(_write(tmp_path, "store:\n  url: 'sqlite:///:memory:'\n"))
    assert cfg.routing.rules == ["rules/"] and not cfg.rules_configured
    assert cfg.store.url == "sqlite:///:memory:"
    assert C.load_config(_write(tmp_path, "server: {port: 1}\n")).store.url == "sqlite:///trino-gateway.db"


def test_a_configured_path_that_does_not_exist_is_a_start_error(tmp_path):
    path = _write(tmp_path, "routing:\n  rules: [rules/]\n")
    cfg = C.load_config(path)                     # loading alone does not look at the disk
    with pytest.raises(C.ConfigError, match=rf"{re.escape(path)}: routing.rules: '{tmp_path}/rules/' "
                                            rf"does not exist \(relative paths resolve against the folder"):
        C.require_paths(cfg)
    (tmp_path / "rules").mkdir()
    C.require_paths(cfg)
    C.require_paths(C.load_config(None))          # the default rules/ may be missing
    cfg = C.load_config(_write(tmp_path, "server:\n  tls: {certFile: c.pem, keyFile: k.pem}\n"))
    with pytest.raises(C.ConfigError, match="server.tls.certFile: .*c.pem' does not exist"):
        C.require_paths(cfg)


@pytest.mark.parametrize("password, why", [
    ("hunter2", "not a pbkdf2_sha256$ITERATIONS$SALT$DIGEST hash"),                # plaintext
    ("pbkdf2_sha256$260000$...", "not a pbkdf2_sha256$ITERATIONS$SALT$DIGEST hash"),  # the docs' placeholder
    ("<hash from trino-gateway hash-password>", "not a pbkdf2"),
    ("pbkdf2_sha256$lots$abc$" + "A" * 44, "iteration count"),
    ("pbkdf2_sha256$1000$abc$not-base64!", "digest"),
    ("pbkdf2_sha256$1000$abc$" + "QUJD", "digest"),                                 # base64, too short
])
def test_a_malformed_password_hash_is_refused_at_start_with_the_key_named(password, why):
    """Hardening finding 10 (issue 16 item 6): it loaded silently and every login then failed."""
    with pytest.raises(C.ConfigError) as err:
        C.config_from_dict({"auth": {"users": {"ops": {"password": password, "roles": ["admin"]}}}}, "gw.yaml")
    assert "gw.yaml: auth.users.ops.password" in str(err.value) and why in str(err.value)
    assert password not in str(err.value) or password.startswith("pbkdf2")   # a plaintext password is not echoed


def test_a_real_password_hash_loads():
    from gateway.admin.auth import hash_password
    cfg = C.config_from_dict({"auth": {"users": {"ops": {"password": hash_password("pw", iterations=1000)}}}})
    assert "ops" in cfg.auth.users
