-- Admission control: one lease per query the gateway admitted to a capped routing group.
-- The number of live leases of a backend is the fleet-wide count of queries the gateway sent
-- there; a lease expires unless renewed (a crashed gateway cannot hold capacity forever).
CREATE TABLE admission_leases (
    lease_id      TEXT PRIMARY KEY,
    backend       TEXT NOT NULL,
    routing_group TEXT NOT NULL,
    user_name     TEXT,
    query_id      TEXT,
    expires_at    DOUBLE PRECISION NOT NULL
);
CREATE INDEX admission_leases_backend ON admission_leases (backend, expires_at);
CREATE INDEX admission_leases_group_user ON admission_leases (routing_group, user_name);
CREATE INDEX admission_leases_query ON admission_leases (query_id);
