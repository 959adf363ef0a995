-- Initial schema of the trino-gateway store (PostgreSQL).
-- Times are unix seconds (double precision) everywhere, the same as in the SQLite schema.

CREATE TABLE backends (
    name          text PRIMARY KEY,
    proxy_to      text NOT NULL,
    external_url  text,
    routing_group text NOT NULL,
    active        boolean NOT NULL DEFAULT true,
    updated_at    double precision NOT NULL
);

-- One row whose version goes up on every change to backends, so each process can poll a
-- single cheap value (backends_stamp) instead of reading the whole table.
CREATE TABLE backends_version (
    id      integer PRIMARY KEY CHECK (id = 1),
    version bigint NOT NULL
);
INSERT INTO backends_version (id, version) VALUES (1, 0);

CREATE FUNCTION tgw_backends_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE backends_version SET version = version + 1 WHERE id = 1;
    RETURN NULL;
END
$$;
CREATE TRIGGER backends_changed AFTER INSERT OR UPDATE OR DELETE ON backends
    FOR EACH ROW EXECUTE FUNCTION tgw_backends_changed();
CREATE TRIGGER backends_truncated AFTER TRUNCATE ON backends
    FOR EACH STATEMENT EXECUTE FUNCTION tgw_backends_changed();

CREATE TABLE query_history (
    query_id      text PRIMARY KEY,
    user_name     text,
    source        text,
    client_tags   text,            -- comma-joined
    sql_text      text,
    routing_group text,
    backend       text,
    rule          text,
    submitted_at  double precision NOT NULL,
    final_state   text,            -- NULL until the gateway sees the query finish
    error         text,
    queued_ms     bigint
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

-- Text search (ILIKE '%...%') uses a trigram index when pg_trgm can be installed; without it
-- the search scans, which is slower but correct, so a missing extension is not an error.
DO $$
BEGIN
    BEGIN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'pg_trgm not available (%); history text search will not be indexed', SQLERRM;
    END;
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
        BEGIN
            EXECUTE 'CREATE INDEX query_history_sql_trgm ON query_history '
                    'USING gin (sql_text gin_trgm_ops)';
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'trigram index not created (%)', SQLERRM;
        END;
    END IF;
END
$$;

-- Routing facts another process may need: query/transaction/spool/oauth id -> backend.
CREATE TABLE sticky (
    kind       text NOT NULL,      -- query | transaction | spool | oauth
    key        text NOT NULL,
    backend    text NOT NULL,
    expires_at double precision NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX sticky_expires ON sticky (expires_at);
