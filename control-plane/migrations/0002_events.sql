-- Schema version 2: protection events (see control-plane/src/events).

-- One row per event: the prost-encoded `Event` as it is now (`record`, rewritten when an
-- operator handles it) and the columns the queries filter on. `id` is the 16 bytes of the
-- event's UUIDv7, so byte order is time order: listings page newest first by id, as the sled
-- store does. Names compare bytewise (COLLATE "C"), as they sort in Rust.
CREATE TABLE events (
    id bytea PRIMARY KEY CHECK (length(id) = 16),
    cluster text COLLATE "C" NOT NULL,
    policy text COLLATE "C" NOT NULL,
    action text COLLATE "C" NOT NULL,
    state text COLLATE "C" NOT NULL,
    -- The event's own time, milliseconds since the epoch.
    time_ms bigint NOT NULL,
    -- Admissions the event stands for (its count, at least 1).
    admissions bigint NOT NULL,
    -- The inserting transaction's id: replicas follow new rows in (tx, id) order up to the
    -- oldest transaction still running (see control-plane/src/events/postgres/follow.rs).
    tx bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    record bytea NOT NULL
);

-- ListEvents by cluster and policy, and by cluster, newest first. Listings without either
-- (and retention, oldest first) walk the primary key.
CREATE INDEX events_by_cluster_policy ON events (cluster, policy, id);
CREATE INDEX events_by_cluster ON events (cluster, id);
-- Following new rows.
CREATE INDEX events_by_tx ON events (tx, id);
