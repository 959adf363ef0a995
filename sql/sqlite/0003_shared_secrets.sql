-- Secrets every worker and replica of one deployment must share: the key that signs routing
-- tokens and the one that signs the OAuth2 callback cookie (docs/sticky-routing.md). Created
-- once by whichever process starts first (INSERT ... ON CONFLICT DO NOTHING), then only read.
CREATE TABLE shared_secrets (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at REAL NOT NULL
);
