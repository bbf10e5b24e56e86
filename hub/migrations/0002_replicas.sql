-- Several hubs on one database.

-- Every write of a server takes the next version, so a replica finds what changed since it last looked.
CREATE SEQUENCE server_versions;
ALTER TABLE servers ADD COLUMN version bigint NOT NULL DEFAULT 0;
CREATE INDEX servers_version ON servers (version);
-- The replica whose stream the server's agent is on ('' when none), and since when.
ALTER TABLE servers ADD COLUMN holder text NOT NULL DEFAULT '';
ALTER TABLE servers ADD COLUMN holder_ms bigint NOT NULL DEFAULT 0;

-- The replicas, each with its last heartbeat: a holder whose heartbeat is old is gone.
CREATE TABLE replicas (
    id           text PRIMARY KEY,
    url          text NOT NULL,
    started_ms   bigint NOT NULL,
    heartbeat_ms bigint NOT NULL
);

-- Leases on work that runs on one replica at a time (alert evaluation, retention, the orphan check).
CREATE TABLE leases (
    name     text PRIMARY KEY,
    holder   text NOT NULL,
    until_ms bigint NOT NULL
);
