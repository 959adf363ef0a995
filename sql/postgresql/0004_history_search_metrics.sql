-- History search and the metrics page (PostgreSQL).
-- (0003 is another change's; versions need not be contiguous.)

-- When the gateway saw the query finish (or learned it from the cluster): the duration column.
ALTER TABLE query_history ADD COLUMN finished_at double precision;

-- Case-insensitive user and source filters, still an index range scan in time order.
CREATE INDEX query_history_user_ci   ON query_history (lower(user_name), submitted_at, query_id);
CREATE INDEX query_history_source_ci ON query_history (lower(source), submitted_at, query_id);
-- Query id prefixes (LIKE 'prefix%') whatever the database's collation.
CREATE INDEX query_history_id_prefix ON query_history (query_id text_pattern_ops);

-- Client tags searched like the SQL text (0001 indexes sql_text): a trigram index when
-- pg_trgm is there; without it the search still works, by scanning.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
        BEGIN
            EXECUTE 'CREATE INDEX query_history_tags_trgm ON query_history '
                    'USING gin (client_tags gin_trgm_ops)';
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'trigram index on client_tags not created (%)', SQLERRM;
        END;
    END IF;
END
$$;

-- The metrics page's history: every gateway metric sampled at an interval, shared by the
-- worker processes of one gateway (the first to write a sample time wins; the others' writes
-- of the same time are no-ops) and kept across restarts. instance = host:port.
CREATE TABLE metric_samples (
    instance text NOT NULL,
    name     text NOT NULL,
    labels   text NOT NULL,        -- JSON object, keys sorted
    ts       double precision NOT NULL,
    value    double precision NOT NULL,
    PRIMARY KEY (instance, name, ts, labels)
);
CREATE INDEX metric_samples_ts ON metric_samples (ts);
