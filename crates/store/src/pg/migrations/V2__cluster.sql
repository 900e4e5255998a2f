-- Several flowd nodes on one database (crates/store/src/cluster.rs). Times are the server's
-- (`now()`), so that nodes whose clocks disagree still agree on who holds what.

-- One row per node instance (a start of a node), kept fresh by its heartbeat. A node is
-- alive while `heartbeat_at + ttl` is ahead and it has not `ended` (left, or superseded by
-- a new start of a node with its name).
CREATE TABLE nodes (
    id           text        PRIMARY KEY,
    name         text        NOT NULL,
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    ttl          interval    NOT NULL,
    -- Whether it takes a share of the triggers (a command such as `flowd replay` does not,
    -- and is not counted when the service nodes share them).
    polls        boolean     NOT NULL,
    ended        text
);
CREATE INDEX nodes_by_name ON nodes (name);

-- Who polls a trigger. `epoch` grows on every change of hands and is checked by every poll
-- commit under the lease, so a node that lost it cannot commit. A released lease keeps its
-- row (and epoch) with an empty owner.
CREATE TABLE trigger_leases (
    trigger    text        PRIMARY KEY,
    owner      text        NOT NULL,
    epoch      bigint      NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX trigger_leases_by_owner ON trigger_leases (owner);

-- The node instance executing a run; NULL: a run for any node to claim.
ALTER TABLE runs ADD COLUMN owner text;
CREATE INDEX runs_open ON runs (id) WHERE status IN ('pending', 'running');
CREATE INDEX runs_by_owner ON runs (owner) WHERE status IN ('pending', 'running', 'failed');

-- Each location's GHL request budget, counted across nodes: requests granted per window
-- (`kind` 'w', `period` the window's number since the epoch, of the length the nodes ask
-- for) and per UTC day ('d', days since the epoch). Old windows are deleted as new ones
-- are counted.
CREATE TABLE budget (
    location text    NOT NULL,
    kind     char(1) NOT NULL,
    period   bigint  NOT NULL,
    used     integer NOT NULL,
    PRIMARY KEY (location, kind, period)
);
