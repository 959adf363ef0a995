-- Initial schema of the trino-gateway store (SQLite).
-- Times are unix seconds (REAL) everywhere, the same as in the PostgreSQL schema.

CREATE TABLE backends (
    name          TEXT PRIMARY KEY,
    proxy_to      TEXT NOT NULL,
    external_url  TEXT,
    routing_group TEXT NOT NULL,
    active        INTEGER NOT NULL DEFAULT 1,
    updated_at    REAL NOT NULL
);

-- One row whose version goes up on every change to backends, so each process can poll a
-- single cheap value (backends_stamp) instead of reading the whole table.
CREATE TABLE backends_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO backends_version (id, version) VALUES (1, 0);

CREATE TRIGGER backends_changed_insert AFTER INSERT ON backends
BEGIN
    UPDATE backends_version SET version = version + 1 WHERE id = 1;
END;
CREATE TRIGGER backends_changed_update AFTER UPDATE ON backends
BEGIN
    UPDATE backends_version SET version = version + 1 WHERE id = 1;
END;
CREATE TRIGGER backends_changed_delete AFTER DELETE ON backends
BEGIN
    UPDATE backends_version SET version = version + 1 WHERE id = 1;
END;

CREATE TABLE query_history (
    query_id      TEXT PRIMARY KEY,
    user_name     TEXT,
    source        TEXT,
    client_tags   TEXT,            -- comma-joined
    sql_text      TEXT,
    routing_group TEXT,
    backend       TEXT,
    rule          TEXT,
    submitted_at  REAL NOT NULL,
    final_state   TEXT,            -- NULL until the gateway sees the query finish
    error         TEXT,
    queued_ms     INTEGER
);

-- Newest first and keyset paging on (submitted_at, query_id); one index per filter so a
-- filtered page is an index range scan in order, never a sort of the whole table.
CREATE INDEX query_history_time    ON query_history (submitted_at, query_id);
CREATE INDEX query_history_user    ON query_history (user_name, submitted_at, query_id);
CREATE INDEX query_history_source  ON query_history (source, submitted_at, query_id);
CREATE INDEX query_history_group   ON query_history (routing_group, submitted_at, query_id);
CREATE INDEX query_history_backend ON query_history (backend, submitted_at, query_id);
CREATE INDEX query_history_rule    ON query_history (rule, submitted_at, query_id);
CREATE INDEX query_history_state   ON query_history (final_state, submitted_at, query_id);

-- Routing facts another process may need: query/transaction/spool/oauth id -> backend.
CREATE TABLE sticky (
    kind       TEXT NOT NULL,      -- query | transaction | spool | oauth
    key        TEXT NOT NULL,
    backend    TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX sticky_expires ON sticky (expires_at);
