-- Statements held in the gateway queue (docs/admission.md), shared so that a poll of a held
-- query's nextUri is answered by whichever worker or replica it reaches, not only by the one
-- holding it (the holder). The holder writes the row before the client sees the nextUri, then
-- the cluster's first answer (state DISPATCHED) or why it ended (ENDED); any process records
-- polls (last_poll) and cancels (cancel_requested) for the holder to act on, and adopts the
-- statement if the holder stopped (holder_seen, the holder's heartbeat, went stale).
CREATE TABLE held_queries (
    query_id         TEXT PRIMARY KEY,
    slug             TEXT NOT NULL,
    holder           TEXT NOT NULL,
    holder_seen      REAL NOT NULL,
    routing_group    TEXT NOT NULL,
    enqueued_at      REAL NOT NULL,
    last_poll        REAL NOT NULL,
    state            TEXT NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    statement        TEXT NOT NULL,
    answer           TEXT
);
CREATE INDEX held_queries_holder ON held_queries (holder);
