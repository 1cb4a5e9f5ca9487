-- Schema version 3: audit violations and runs (see control-plane/src/audit).
-- Names are bytes, as in the store's tables; the words (action, severity, state) are text.

-- The audit feed: every change of a violation (and every deletion of a cluster's violations)
-- takes the next position. Writers take it last, holding the row's lock until they commit, so
-- positions are in commit order and a replica that read up to a position has read everything
-- before it. Each replica follows the feed to tell its watchers and recount.
CREATE TABLE audit_feed (
    id smallint PRIMARY KEY CHECK (id = 1),
    seq bigint NOT NULL
);
INSERT INTO audit_feed (id, seq) VALUES (1, 0);

-- One row per violation, keyed as the sled store keys it (`v`, then the escaped cluster,
-- namespace, kind, name and policy), so listings are in the same order on both backends and a
-- page token resumes after a key. `record` is the prost `ViolationRecord` (the violation, and
-- the audit run and resync that last touched it, also in `run` and `resync`). `seq`: the feed
-- position of the last change (a confirmation keeps it). `resolved_at_ms`: when a resolved
-- violation counts as resolved for the retention (unix ms); null while open.
CREATE TABLE violations (
    key bytea PRIMARY KEY,
    cluster bytea NOT NULL,
    namespace bytea NOT NULL,
    kind bytea NOT NULL,
    name bytea NOT NULL,
    policy bytea NOT NULL,
    action text NOT NULL,
    severity text NOT NULL,
    state text NOT NULL,
    resolved_at_ms bigint,
    run text NOT NULL,
    resync bigint NOT NULL,
    seq bigint NOT NULL,
    record bytea NOT NULL
);
-- Counts of open violations (by cluster, or all), and a resync's end (a cluster's open ones).
CREATE INDEX violations_open ON violations (cluster, namespace, policy, severity)
    WHERE state = 'open';
-- The feed.
CREATE INDEX violations_by_seq ON violations (seq);
-- The retention.
CREATE INDEX violations_resolved ON violations (resolved_at_ms) WHERE state = 'resolved';

-- Each cluster's current audit run, and how many resyncs were started.
CREATE TABLE audit_runs (
    cluster bytea PRIMARY KEY,
    run text NOT NULL,
    resync bigint NOT NULL
);

-- Clusters whose violations were deleted, at the feed position of the deletion: replicas
-- following the feed recount them.
CREATE TABLE audit_cleared (
    cluster bytea PRIMARY KEY,
    seq bigint NOT NULL
);
CREATE INDEX audit_cleared_by_seq ON audit_cleared (seq);
