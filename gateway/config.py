"""Load and validate the gateway's YAML configuration.

The file format is a product contract (see docs/configuration.md): every key has a default,
unknown keys are errors naming the key and the file, ``${ENV:NAME}`` is substituted from the
environment, and durations are strings such as ``500ms``, ``5s``, ``1m`` or ``24h``.

Validation happens once at start; the rest of the gateway reads plain attributes.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml

__all__ = [
    "ConfigError", "Config", "ServerConfig", "StoreConfig", "RoutingConfig", "MonitorConfig",
    "GroupConfig", "BackendConfig", "AuthConfig", "UserConfig", "LoggingConfig", "TlsConfig", "QueryConfig",
    "load_config", "parse_duration", "config_from_dict", "require_paths", "DEFAULT_GROUP_FALLBACK",
]


class ConfigError(ValueError):
    """A configuration problem; the message names the file and the key."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_ENV = re.compile(r"\$\{ENV:([A-Za-z_][A-Za-z0-9_]*)\}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
DEFAULT_GROUP_FALLBACK = "default"


def parse_duration(value: Any, where: str = "duration") -> float:
    """Return seconds for '500ms', '5s', '1m', '24h', '2d' (a bare number means seconds)."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a duration such as 5s, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConfigError(f"{where}: a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ConfigError(f"{where}: expected a duration such as 500ms, 5s, 1m or 24h, got {value!r}")


@dataclass
class TlsConfig:
    certFile: str | None = None
    keyFile: str | None = None
    port: int | None = None  # HTTPS port; when set, server.port stays plain HTTP alongside


@dataclass
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    workers: int = 1
    publicUrl: str | None = None
    maxBodySize: int = 64 * 1024 * 1024          # bytes accepted in a client request body (413 beyond)
    backendConnectTimeout: float = 5.0            # seconds to open a connection to a backend
    backendRequestTimeout: float = 60.0           # seconds for a backend to answer (headers)
    idleConnectionTimeout: float = 300.0          # client connections idle longer are closed
    headerTimeout: float = 10.0                   # time to send a request head (from connect / first byte)
    bodyProgressTimeout: float = 30.0             # a request body with no new bytes this long is dropped
    maxConnections: int | None = None             # client connections per worker; null: descriptor limit - reserve
    maxConnectionsPerAddress: int = 256           # client connections per worker from one address; 0: no cap
    reservedDescriptors: int = 128                # kept for backends, the monitor, the store, rules reloads
    # Shedding (gateway/runtime/overload.py): NEW statements get 429 + Retry-After while this worker's
    # event loop ran this late within the last 2 s, or it proxies this many requests; polls of
    # running queries are never shed. 0 turns a limit off.
    shedLoopLag: float = 3.0
    shedInFlight: int = 8000
    shedRetryAfter: float = 2.0                   # the Retry-After sent with a shed statement (whole seconds)
    shutdownGracePeriod: float = 30.0             # SIGTERM: how long in-flight requests may finish
    xForwardedFor: bool = True                    # add X-Forwarded-For / -Proto / -Host and Via
    trustForwardedHeaders: bool = False           # honour X-Forwarded-Proto/Host from a load balancer
    stateDir: str | None = None                   # where worker processes share files (metrics); default: temp
    backendCaFile: str | None = None              # PEM CA bundle for https:// backends; default: system CAs
    backendVerify: bool = True                    # check backend certificates (false: warned at start)
    tls: TlsConfig = field(default_factory=TlsConfig)


@dataclass
class StoreConfig:
    url: str = "sqlite:///trino-gateway.db"
    historyRetention: float = 86400.0
    historyEnabled: bool = True
    historyFlushInterval: float = 0.5
    historyBatchSize: int = 500
    historyMaxPending: int = 100_000   # rows kept in memory while the store is down; beyond: dropped and counted
    poolSize: int = 4
    syncInterval: float = 1.0          # how often each process reloads backends from the store
    process: bool = True               # run database work in a child process (off the proxy's GIL)
    metricsInterval: float = 30.0      # how often the metrics page's history is sampled (0: never)
    metricsRetention: float = 86400.0  # how long those samples are kept
    resolveAfter: float = 120.0        # unfinished queries this old are checked with their cluster (0: never)


@dataclass
class RoutingConfig:
    defaultGroup: str = "adhoc"
    policy: str = "least-queued"
    allowGroupHeader: bool = True
    rules: list[str] = field(default_factory=lambda: ["rules/"])
    maxSqlBytes: int = 1024 * 1024     # body bytes read for SQL analysis
    analysisTimeout: float = 1.0        # SQL analysis of one statement (off the loop); beyond: facts unknown
    rulesCheckTimeout: float = 10.0     # a rules check or save through the API or the rules page
    stickyTtl: float = 86400.0          # how long query/transaction/spool ids stay pinned
    cookieSecret: str | None = None     # signs the OAuth2 callback routing cookie; default: kept in the store
    tokenKey: str | None = None         # signs routing tokens in URIs; default: created once, kept in the store
    previousTokenKeys: list[str] = field(default_factory=list)  # still accepted (key rotation)


@dataclass
class MonitorConfig:
    type: str = "info-api"
    interval: float = 5.0
    timeout: float = 3.0
    username: str | None = None
    password: str | None = None
    healthyThreshold: int = 1          # consecutive good results to become HEALTHY
    unhealthyThreshold: int = 1        # consecutive bad results to become UNHEALTHY
    minActiveNodes: int = 1            # metrics monitor: fewer active nodes -> UNHEALTHY
    maxQueued: int | None = None       # metrics monitor: more queued -> UNHEALTHY
    maxRunning: int | None = None      # metrics monitor: more running -> UNHEALTHY


@dataclass
class GroupConfig:
    fallback: str = DEFAULT_GROUP_FALLBACK
    maxRunningQueries: int | None = None
    maxQueriesPerUser: int | None = None
    maxQueued: int = 1000
    maxQueuedPerUser: int = 100        # held statements of one user (anonymous ones count as one user)
    maxQueuedPerAddress: int = 200     # held statements from one client address
    maxQueueWait: float = 1800.0


@dataclass
class BackendConfig:
    name: str
    proxyTo: str
    externalUrl: str | None = None
    routingGroup: str | None = None
    active: bool = True


@dataclass
class UserConfig:
    password: str
    roles: list[str] = field(default_factory=lambda: ["user"])


@dataclass
class AuthConfig:
    users: dict[str, UserConfig] = field(default_factory=dict)
    sessionSecret: str | None = None
    sessionTtl: float = 43200.0
    showAllQueries: bool = False       # role `user` sees other users' SQL text


@dataclass
class LoggingConfig:
    level: str = "INFO"
    format: str = "text"               # text | json


@dataclass
class QueryConfig:
    clientTimeout: float = 300.0       # a query held at the gateway without a poll this long is dropped


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    groups: dict[str, GroupConfig] = field(default_factory=dict)
    backends: list[BackendConfig] = field(default_factory=list)
    auth: AuthConfig = field(default_factory=AuthConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    source: str = "<defaults>"         # the file this came from, for messages
    # routing.rules was written in the configuration (not the default ``rules/``): its paths
    # must exist (see require_paths); the default folder may be missing.
    rules_configured: bool = False

    def group(self, name: str) -> GroupConfig:
        return self.groups.get(name) or GroupConfig()


# Keys whose values are durations (seconds internally).
_DURATION_KEYS = {
    "backendConnectTimeout", "backendRequestTimeout", "idleConnectionTimeout", "headerTimeout",
    "bodyProgressTimeout",
    "shutdownGracePeriod", "historyRetention", "historyFlushInterval", "syncInterval", "stickyTtl",
    "interval", "timeout", "maxQueueWait", "sessionTtl", "clientTimeout",
    "metricsInterval", "metricsRetention", "resolveAfter",
    "analysisTimeout", "rulesCheckTimeout", "shedLoopLag", "shedRetryAfter",
}


def _substitute_env(value: Any, src: str, path: str) -> Any:
    if isinstance(value, str):
        def repl(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in os.environ:
                raise ConfigError(f"{src}: {path}: environment variable {name} is not set")
            return os.environ[name]
        return _ENV.sub(repl, value)
    if isinstance(value, list):
        return [_substitute_env(v, src, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _substitute_env(v, src, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    return value


def _coerce(tp: Any, value: Any, src: str, path: str, key: str) -> Any:
    """Convert one leaf value to the annotated type, with an error naming the key."""
    tname = tp if isinstance(tp, str) else getattr(tp, "__name__", str(tp))
    optional = "None" in tname
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{src}: {path}: a value is required")
    if key in _DURATION_KEYS:
        return parse_duration(value, f"{src}: {path}")
    base = tname.replace(" | None", "").strip()
    if base == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{src}: {path}: expected true or false, got {value!r}")
        return value
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{src}: {path}: expected an integer, got {value!r}")
        return value
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{src}: {path}: expected a number, got {value!r}")
        return float(value)
    if base == "str":
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{src}: {path}: expected a string, got {type(value).__name__}")
        return str(value)
    if base.startswith("list[str]"):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{src}: {path}: expected a list of strings")
        return list(value)
    raise AssertionError(f"unhandled config type {tname} at {path}")


def _section(cls: Any, data: Any, src: str, path: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{src}: {path}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        kp = f"{path}.{key}" if path else str(key)
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{src}: unknown key '{kp}' (known keys here: {known})")
        ftype = fields[key].type
        if dataclasses.is_dataclass(_NESTED.get(ftype if isinstance(ftype, str) else "", object)):
            kwargs[key] = _section(_NESTED[ftype], value, src, kp)
        else:
            kwargs[key] = _coerce(ftype, value, src, kp, key)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
                   and f.name not in kwargs]
        raise ConfigError(f"{src}: {path}: missing required key(s) {', '.join(missing)}") from exc


_NESTED: dict[str, Any] = {"TlsConfig": TlsConfig}


def validate_url(url: str, where: str) -> str:
    if _CONTROL.search(url):
        # urlsplit drops CR/LF/TAB silently; stored, they broke log lines and every probe
        raise ConfigError(f"{where}: control characters (CR, LF, NUL ...) are not allowed in a URL, got {url!r}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:   # e.g. "http://[::1" (unbalanced IPv6 brackets)
        raise ConfigError(f"{where}: not a valid URL ({exc}): {url!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: expected an http:// or https:// URL, got {url!r}")
    try:
        parts.port
    except ValueError:
        raise ConfigError(f"{where}: invalid port in {url!r}") from None
    if parts.query or parts.fragment or (parts.path not in ("", "/")):
        raise ConfigError(f"{where}: a backend URL is scheme://host:port only, got {url!r}")
    return url.rstrip("/")


def validate_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{where}: a name is 1-128 letters, digits, '.', '_' or '-', got {name!r}")
    return name


def config_from_dict(data: Any, src: str = "<dict>", base_dir: str | None = None) -> Config:
    """``base_dir``: the folder relative paths in ``data`` resolve against (the configuration
    file's folder); ``None`` leaves them relative to the working directory."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{src}: the top level must be a mapping")
    data = _substitute_env(data, src, "")
    known = {f.name for f in dataclasses.fields(Config)} - {"source", "rules_configured"}
    for key in data:
        if key not in known:
            raise ConfigError(f"{src}: unknown key '{key}' (known keys: {', '.join(sorted(known))})")
    cfg = Config(source=src)
    cfg.server = _section(ServerConfig, data.get("server"), src, "server")
    cfg.store = _section(StoreConfig, data.get("store"), src, "store")
    cfg.routing = _section(RoutingConfig, data.get("routing"), src, "routing")
    for i, k in enumerate([cfg.routing.tokenKey] + cfg.routing.previousTokenKeys):
        if k is not None and len(k.encode()) < 16:
            where = "routing.tokenKey" if i == 0 else f"routing.previousTokenKeys[{i - 1}]"
            raise ConfigError(f"{src}: {where}: a routing token key must be at least 16 bytes")
    keys = [k for k in [cfg.routing.tokenKey] + cfg.routing.previousTokenKeys if k is not None]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{src}: routing.previousTokenKeys: lists the same key twice, or the "
                          f"current routing.tokenKey")
    cfg.monitor = _section(MonitorConfig, data.get("monitor"), src, "monitor")
    cfg.logging = _section(LoggingConfig, data.get("logging"), src, "logging")
    cfg.query = _section(QueryConfig, data.get("query"), src, "query")

    groups = data.get("groups") or {}
    if not isinstance(groups, dict):
        raise ConfigError(f"{src}: groups: expected a mapping of group name to settings")
    for gname, gdata in groups.items():
        validate_name(gname, f"{src}: groups.{gname}")
        cfg.groups[gname] = _section(GroupConfig, gdata, src, f"groups.{gname}")
        if cfg.groups[gname].fallback not in ("default", "none"):
            raise ConfigError(f"{src}: groups.{gname}.fallback: expected 'default' or 'none'")
        for key in ("maxQueued", "maxQueuedPerUser", "maxQueuedPerAddress"):
            if getattr(cfg.groups[gname], key) < 0:
                raise ConfigError(f"{src}: groups.{gname}.{key}: cannot be negative")

    backends = data.get("backends") or []
    if not isinstance(backends, list):
        raise ConfigError(f"{src}: backends: expected a list")
    seen: set[str] = set()
    for i, bdata in enumerate(backends):
        b = _section(BackendConfig, bdata, src, f"backends[{i}]")
        validate_name(b.name, f"{src}: backends[{i}].name")
        if b.name in seen:
            raise ConfigError(f"{src}: backends[{i}].name: duplicate backend name {b.name!r}")
        seen.add(b.name)
        b.proxyTo = validate_url(b.proxyTo, f"{src}: backends[{i}].proxyTo")
        if b.externalUrl:
            b.externalUrl = b.externalUrl.rstrip("/")
        b.routingGroup = b.routingGroup or cfg.routing.defaultGroup
        validate_name(b.routingGroup, f"{src}: backends[{i}].routingGroup")
        cfg.backends.append(b)

    auth = data.get("auth") or {}
    if not isinstance(auth, dict):
        raise ConfigError(f"{src}: auth: expected a mapping")
    users = auth.get("users") or {}
    auth_rest = {k: v for k, v in auth.items() if k != "users"}
    cfg.auth = _section(AuthConfig, auth_rest, src, "auth")
    if not isinstance(users, dict):
        raise ConfigError(f"{src}: auth.users: expected a mapping of user name to settings")
    from gateway.admin.auth import password_hash_problem   # auth imports this module
    from gateway.limits import MAX_USER_CHARS
    for uname, udata in users.items():
        u = _section(UserConfig, udata, src, f"auth.users.{uname}")
        if not isinstance(uname, str) or not uname or len(uname) > MAX_USER_CHARS \
                or ":" in uname or _CONTROL.search(uname):
            raise ConfigError(f"{src}: auth.users: {uname!r} is not a user name (1-{MAX_USER_CHARS} "
                              "characters, no ':' and no control characters)")
        for role in u.roles:
            if role not in ("admin", "user", "api"):
                raise ConfigError(f"{src}: auth.users.{uname}.roles: unknown role {role!r} (admin, user, api)")
        problem = password_hash_problem(u.password)
        if problem:
            raise ConfigError(f"{src}: auth.users.{uname}.password: {problem}; put the hash printed by "
                              "`trino-gateway hash-password` here, never the password itself")
        cfg.auth.users[str(uname)] = u

    cfg.rules_configured = isinstance(data.get("routing"), dict) and "rules" in data["routing"]
    if base_dir is not None:
        _resolve_paths(cfg, data, base_dir)
    _check_values(cfg, src)
    return cfg


def _written(data: dict[str, Any], section: str, key: str) -> bool:
    value = data.get(section)
    return isinstance(value, dict) and value.get(key) is not None


def _resolve_paths(cfg: Config, data: dict[str, Any], base_dir: str) -> None:
    """Relative paths written in a configuration file resolve against the file's folder, so a
    gateway started from another directory (systemd, a container, cron) reads the same files.
    Defaults that were not written (``rules/``, ``sqlite:///trino-gateway.db``) stay relative to
    the working directory, as for ``serve`` without ``--config``."""
    def under(path: str) -> str:
        return path if os.path.isabs(path) else os.path.join(base_dir, path)

    if cfg.rules_configured:
        cfg.routing.rules = [under(p) for p in cfg.routing.rules]
    s = cfg.server
    if s.tls.certFile:
        s.tls.certFile = under(s.tls.certFile)
    if s.tls.keyFile:
        s.tls.keyFile = under(s.tls.keyFile)
    if s.backendCaFile:
        s.backendCaFile = under(s.backendCaFile)
    if s.stateDir:
        s.stateDir = under(s.stateDir)
    prefix = "sqlite:///"
    if _written(data, "store", "url") and cfg.store.url.lower().startswith(prefix):
        path = cfg.store.url[len(prefix):]
        if path and path != ":memory:" and not os.path.isabs(path):
            cfg.store.url = prefix + under(path)


def require_paths(cfg: Config) -> None:
    """At start-up: every configured rules path and TLS file exists (ConfigError otherwise).

    Not part of loading, so a configuration can be checked on a machine that lacks its files
    (CI, the tests of docker/gateway.yaml)."""
    src = cfg.source
    hint = "" if src.startswith("<") else f" (relative paths resolve against the folder of {src})"
    wanted = [("routing.rules", p) for p in cfg.routing.rules] if cfg.rules_configured else []
    wanted += [(f"server.tls.{k}", v) for k, v in
               (("certFile", cfg.server.tls.certFile), ("keyFile", cfg.server.tls.keyFile)) if v]
    for key, path in wanted:
        if not os.path.exists(path):
            raise ConfigError(f"{src}: {key}: {path!r} does not exist{hint}")


def _check_plugins(cfg: Config, src: str) -> None:
    """``routing.policy``, ``monitor.type`` and the scheme of ``store.url`` name a built-in or an
    installed plugin (gateway/plugins.py); a named plugin is loaded now, so a broken one stops
    the start with its entry point named instead of failing on the first query or probe."""
    # Imported here: these modules import this one.
    from gateway.backends.monitor import MONITOR_TYPES
    from gateway.plugins import PluginError
    from gateway.routing.balancer import POLICIES
    from gateway.store import STORE_KINDS, store_kind

    url = cfg.store.url
    kind = store_kind(url)
    if not kind or "://" not in url:
        raise ConfigError(f"{key_location(src, 'store.url')}: store.url: expected sqlite:///path, "
                          f"postgresql://... or a store kind of {STORE_KINDS.describe()}, got {url!r}")
    for key, value, plugins in (("routing.policy", cfg.routing.policy, POLICIES),
                                ("monitor.type", cfg.monitor.type, MONITOR_TYPES),
                                ("store.url", kind, STORE_KINDS)):
        try:
            plugins.get(value)
        except PluginError as exc:
            raise ConfigError(f"{key_location(src, key)}: {key}: {exc.detail}") from None


def key_location(src: str, key: str) -> str:
    """``file:line`` of the dotted ``key`` in the YAML file ``src`` (``src`` alone when it is not a
    file or the key is not written there, e.g. a default). Only called for an error."""
    try:
        with open(src, "rb") as fh:
            node = yaml.compose(fh)
    except (OSError, yaml.YAMLError, TypeError):
        return src
    for part in key.split("."):
        if not isinstance(node, yaml.MappingNode):
            return src
        node = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part), None)
        if node is None:
            return src
    return f"{src}:{node.start_mark.line + 1}"


def _check_values(cfg: Config, src: str) -> None:
    s = cfg.server
    if not (0 <= s.port <= 65535):
        raise ConfigError(f"{src}: server.port: {s.port} is not a TCP port")
    if s.workers < 1:
        raise ConfigError(f"{src}: server.workers: must be at least 1")
    if s.publicUrl:
        parts = urlsplit(s.publicUrl)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"{src}: server.publicUrl: expected an http(s) URL, got {s.publicUrl!r}")
        s.publicUrl = s.publicUrl.rstrip("/")
    if bool(s.tls.certFile) != bool(s.tls.keyFile):
        raise ConfigError(f"{src}: server.tls: certFile and keyFile go together")
    if s.backendCaFile and not os.path.isfile(s.backendCaFile):
        raise ConfigError(f"{src}: server.backendCaFile: {s.backendCaFile!r} is not a readable file")
    if s.maxBodySize < 1:
        raise ConfigError(f"{src}: server.maxBodySize: must be positive")
    if s.headerTimeout <= 0:
        raise ConfigError(f"{src}: server.headerTimeout: must be positive")
    if s.shedRetryAfter < 1:
        raise ConfigError(f"{src}: server.shedRetryAfter: must be at least 1s (clients read whole seconds)")
    for key in ("maxConnectionsPerAddress", "reservedDescriptors", "shedInFlight"):
        if getattr(s, key) < 0:
            raise ConfigError(f"{src}: server.{key}: cannot be negative")
    if s.maxConnections is not None and s.maxConnections < 1:
        raise ConfigError(f"{src}: server.maxConnections: must be at least 1 (or null: automatic)")
    if s.publicUrl and _CONTROL.search(s.publicUrl):
        raise ConfigError(f"{src}: server.publicUrl: control characters are not allowed in a URL")
    validate_name(cfg.routing.defaultGroup, f"{src}: routing.defaultGroup")
    if cfg.monitor.interval <= 0 or cfg.monitor.timeout <= 0:
        raise ConfigError(f"{src}: monitor.interval and monitor.timeout must be positive")
    if cfg.monitor.healthyThreshold < 1 or cfg.monitor.unhealthyThreshold < 1:
        raise ConfigError(f"{src}: monitor thresholds must be at least 1")
    _check_plugins(cfg, src)
    if cfg.logging.format not in ("text", "json"):
        raise ConfigError(f"{src}: logging.format: expected text or json")
    if cfg.logging.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"{src}: logging.level: expected DEBUG, INFO, WARNING or ERROR")


def load_config(path: str | None) -> Config:
    """Read a config file; ``None`` gives the built-in defaults."""
    if path is None:
        return config_from_dict({}, "<defaults>")
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    return config_from_dict(data, path, base_dir=os.path.dirname(os.path.abspath(path)))
