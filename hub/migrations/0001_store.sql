-- The hub store on PostgreSQL: one table per repository of hub/src/store/mod.rs. Records are the same
-- serde JSON as the embedded store's (jsonb, so an operator can query them); what is looked up, ordered or
-- constrained is a column of its own. u64 values are stored in bigint.

-- Servers: the record, and apart from it the progress every report moves (so a report does not rewrite
-- the record).
CREATE TABLE servers (
    name             text PRIMARY KEY,
    record           jsonb NOT NULL,
    last_seq         bigint NOT NULL DEFAULT 0,
    reports_received bigint NOT NULL DEFAULT 0,
    last_seen_ms     bigint NOT NULL DEFAULT 0,
    last_report_ms   bigint NOT NULL DEFAULT 0,
    first_seen_ms    bigint NOT NULL DEFAULT 0
);

-- Unused join tokens, by the SHA-256 of the secret: at most one per server.
CREATE TABLE tokens (
    hash   text PRIMARY KEY,
    server text NOT NULL UNIQUE,
    record jsonb NOT NULL
);

-- Burned tokens, kept so a reused token gets a precise error.
CREATE TABLE burned_tokens (
    hash   text PRIMARY KEY,
    record jsonb NOT NULL
);

CREATE TABLE revoked_serials (
    serial text PRIMARY KEY,
    record jsonb NOT NULL
);

-- Health reports (HistoryPoint, protobuf), bounded per server.
CREATE TABLE history (
    server text NOT NULL,
    seq    bigint NOT NULL,
    point  bytea NOT NULL,
    PRIMARY KEY (server, seq)
);

-- The latest AppsState (protobuf) of each server.
CREATE TABLE apps (
    server text PRIMARY KEY,
    state  bytea NOT NULL
);

-- The append-only audit log. Appends are serialised (an advisory lock held to the commit), so ids grow
-- with time and a reader never sees a later id before an earlier one.
CREATE SEQUENCE audit_ids;
CREATE TABLE audit (
    id    bigint PRIMARY KEY,
    at_ms bigint NOT NULL,
    entry jsonb NOT NULL
);
CREATE INDEX audit_at ON audit (at_ms);

-- Commands dispatched and not audited yet; the plans of fan-outs.
CREATE TABLE pending_commands (
    id     text PRIMARY KEY,
    record jsonb NOT NULL
);
CREATE TABLE plans (
    job_id text PRIMARY KEY,
    record jsonb NOT NULL
);

CREATE TABLE operator_revocations (
    name   text PRIMARY KEY,
    record jsonb NOT NULL
);

-- The durable job queue. Queue writes are serialised by an advisory lock; `open` is what a claim scans.
CREATE SEQUENCE job_ids;
CREATE TABLE jobs (
    id              bigint PRIMARY KEY,
    idempotency_key text UNIQUE,
    open            boolean NOT NULL,
    record          jsonb NOT NULL
);
CREATE INDEX jobs_open ON jobs (id) WHERE open;

CREATE TABLE silences (
    id     text PRIMARY KEY,
    record jsonb NOT NULL
);
CREATE TABLE alerts (
    key    text PRIMARY KEY,
    record jsonb NOT NULL
);

-- Usage: a cursor per server, buckets (UsageBucket, protobuf) per resolution ('h' or 'd'), start,
-- customer and server.
CREATE TABLE usage_cursors (
    server text PRIMARY KEY,
    cursor jsonb NOT NULL
);
CREATE TABLE usage_buckets (
    res      text NOT NULL,
    start_ms bigint NOT NULL,
    customer text NOT NULL,
    server   text NOT NULL,
    bucket   bytea NOT NULL,
    PRIMARY KEY (res, start_ms, customer, server)
);
