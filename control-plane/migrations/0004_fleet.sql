-- Schema version 4: the fleet view across replicas. Each replica writes what the agents
-- connected to it said (their open streams and last status report) and refreshes its own row
-- in `replicas`; every replica merges the rows of the live ones into its fleet view.

CREATE TABLE replicas (
    replica text PRIMARY KEY,
    seen_millis bigint NOT NULL
);

-- `record`: a `ClusterStatus` (prost) with the agent's last report and `last_seen`.
CREATE TABLE fleet_status (
    cluster bytea NOT NULL,
    replica text NOT NULL,
    streams integer NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (cluster, replica)
);
CREATE INDEX fleet_status_by_replica ON fleet_status (replica);
