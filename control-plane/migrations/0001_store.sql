-- Portcullis control-plane store, schema version 1: the objects agents sync (policies,
-- clusters with their token hashes and protection settings, image scans with their index keys
-- and summaries, the vulnerability dictionary) and the change log. Records are prost-encoded
-- API messages, as in the embedded sled store and on the wire; keys are bytes, ordered as sled
-- orders them. Every query of the store goes by a primary key or the indexes below.

-- The global revision: one row, updated (and so locked) by every writing transaction, which
-- serialises writers and makes revisions gapless and in commit order.
CREATE TABLE revision (
    id smallint PRIMARY KEY CHECK (id = 1),
    value bigint NOT NULL,
    compacted_through bigint NOT NULL DEFAULT 0
);
INSERT INTO revision (id, value) VALUES (1, 0);

CREATE TABLE meta (
    key text PRIMARY KEY,
    value text NOT NULL
);

-- One entry per revision: a `ChangeRecord`.
CREATE TABLE changes (
    revision bigint PRIMARY KEY,
    record bytea NOT NULL
);

CREATE TABLE policies (
    name bytea PRIMARY KEY,
    record bytea NOT NULL
);

-- A `ClusterRecord` (the cluster and the SHA-256 of its agent token).
CREATE TABLE clusters (
    name bytea PRIMARY KEY,
    token_sha256 bytea NOT NULL UNIQUE,
    record bytea NOT NULL
);

-- The whole scan (`record`) and the summary agents receive, vulnerabilities numbered.
CREATE TABLE scans (
    id bytea PRIMARY KEY,
    record bytea NOT NULL,
    summary bytea NOT NULL
);

-- Every digest and normalised `repository:tag` of a scan -> its id.
CREATE TABLE scan_keys (
    key bytea PRIMARY KEY,
    id bytea NOT NULL
);
CREATE INDEX scan_keys_by_id ON scan_keys (id);

-- Vulnerability ids by number, from 0 without gaps; numbers never change.
CREATE TABLE vulnerability_ids (
    number integer PRIMARY KEY,
    id text NOT NULL UNIQUE
);
