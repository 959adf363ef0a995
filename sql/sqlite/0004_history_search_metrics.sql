-- History search and the metrics page (SQLite).
-- (0003 is another change's; versions need not be contiguous.)

-- When the gateway saw the query finish (or learned it from the cluster): the duration column.
ALTER TABLE query_history ADD COLUMN finished_at REAL;

-- Case-insensitive user and source filters, still an index range scan in time order.
CREATE INDEX query_history_user_ci   ON query_history (lower(user_name), submitted_at, query_id);
CREATE INDEX query_history_source_ci ON query_history (lower(source), submitted_at, query_id);

-- Text search in the SQL and the client tags without reading the whole table: an FTS5 index
-- of trigrams (substring matches of 3+ characters, case-insensitive), over the history table
-- itself (external content: the SQL is stored once). Triggers keep it in step; retention
-- deletes go through the delete trigger. query_history is a rowid table; VACUUM may renumber
-- rowids, so after a manual VACUUM run: INSERT INTO query_history_fts(query_history_fts) VALUES ('rebuild');
CREATE VIRTUAL TABLE query_history_fts USING fts5(
    sql_text, client_tags, content='query_history', content_rowid='rowid', tokenize='trigram');

CREATE TRIGGER query_history_fts_insert AFTER INSERT ON query_history
BEGIN
    INSERT INTO query_history_fts (rowid, sql_text, client_tags)
    VALUES (new.rowid, new.sql_text, new.client_tags);
END;
CREATE TRIGGER query_history_fts_delete AFTER DELETE ON query_history
BEGIN
    INSERT INTO query_history_fts (query_history_fts, rowid, sql_text, client_tags)
    VALUES ('delete', old.rowid, old.sql_text, old.client_tags);
END;
CREATE TRIGGER query_history_fts_update AFTER UPDATE OF sql_text, client_tags ON query_history
BEGIN
    INSERT INTO query_history_fts (query_history_fts, rowid, sql_text, client_tags)
    VALUES ('delete', old.rowid, old.sql_text, old.client_tags);
    INSERT INTO query_history_fts (rowid, sql_text, client_tags)
    VALUES (new.rowid, new.sql_text, new.client_tags);
END;
INSERT INTO query_history_fts (query_history_fts) VALUES ('rebuild');

-- The metrics page's history: every gateway metric sampled at an interval, shared by the
-- worker processes of one gateway (the first to write a sample time wins; the others' writes
-- of the same time are no-ops) and kept across restarts. instance = host:port.
CREATE TABLE metric_samples (
    instance TEXT NOT NULL,
    name     TEXT NOT NULL,
    labels   TEXT NOT NULL,        -- JSON object, keys sorted
    ts       REAL NOT NULL,        -- unix seconds, a multiple of the sampling interval
    value    REAL NOT NULL,
    PRIMARY KEY (instance, name, ts, labels)
);
CREATE INDEX metric_samples_ts ON metric_samples (ts);
