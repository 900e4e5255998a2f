-- flowd's store in PostgreSQL: the same records as the embedded store (crates/store/src/kv_store.rs),
-- as tables with the indexes its queries need. Records (runs, items, states, tokens, payloads)
-- are `json`, not `jsonb`: `json` keeps the text as written (key order included), as the
-- embedded store does, and nothing queries inside them.

-- store_id and created_at, written once when the schema is created.
CREATE TABLE meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- Dedupe: a key seen for a trigger is never fired again. The primary key is what
-- `INSERT ... ON CONFLICT DO NOTHING` in a poll commit relies on: of two writers
-- committing the same key, one inserts it and the other learns it was seen.
CREATE TABLE seen (
    trigger text        NOT NULL,
    key     text        NOT NULL,
    seen_at timestamptz NOT NULL,
    PRIMARY KEY (trigger, key)
);
-- Retention keeps each trigger's newest keys.
CREATE INDEX seen_by_time ON seen (trigger, seen_at DESC);

CREATE TABLE triggers (
    trigger text PRIMARY KEY,
    state   json NOT NULL
);

-- Run ids come from one sequence: unique across every node, increasing, so "newest
-- first" is `ORDER BY id DESC`.
CREATE SEQUENCE run_ids AS bigint START 1;

CREATE TABLE runs (
    id            bigint      PRIMARY KEY,
    flow          text        NOT NULL,
    status        text        NOT NULL,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    next_retry_at timestamptz,
    -- The run as `store::Run` encodes it, without its item (which never changes).
    record        json        NOT NULL,
    item          json        NOT NULL
);
CREATE INDEX runs_by_status ON runs (status, id);
CREATE INDEX runs_by_flow ON runs (flow, id);
CREATE INDEX runs_due ON runs (next_retry_at, id) WHERE status = 'failed' AND next_retry_at IS NOT NULL;

-- The GHL records a run touched (`contact:abc123`): flowd runs --touched.
CREATE TABLE run_touched (
    record text   NOT NULL,
    run_id bigint NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    PRIMARY KEY (record, run_id)
);
CREATE INDEX run_touched_by_run ON run_touched (run_id);

CREATE TABLE tokens (
    account text PRIMARY KEY,
    tokens  json NOT NULL
);

CREATE TABLE webhooks (
    id           text        PRIMARY KEY,
    payload      json        NOT NULL,
    received_at  timestamptz NOT NULL,
    processed_at timestamptz
);
CREATE INDEX webhooks_unprocessed ON webhooks (received_at, id) WHERE processed_at IS NULL;
