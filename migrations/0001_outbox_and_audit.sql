-- The transactional outbox of erp-sync: received events, the commands derived from
-- them, the dead letters, and an append-only audit trail of every step.

-- One row per envelope id ever received; the primary key makes a repeated id a
-- duplicate.
CREATE TABLE events (
    id            uuid PRIMARY KEY,
    object_type   text NOT NULL,
    -- NULL for the ERP-link pair form until the link is resolved.
    object_id     text,
    event_type    text NOT NULL,
    enqueue_time  timestamptz NOT NULL,
    routing_key   text NOT NULL,
    envelope      jsonb NOT NULL,
    traceparent   text,
    tracestate    text,
    received_at   timestamptz NOT NULL DEFAULT now(),
    -- NULL while a command of the event is pending or running.
    outcome       text CHECK (outcome IN ('applied', 'ignored', 'superseded', 'parked')),
    settled_at    timestamptz
);

CREATE INDEX events_unsettled ON events (received_at) WHERE outcome IS NULL;
CREATE INDEX events_object ON events (object_id);

-- One row per intended effect on the platform.
CREATE TABLE commands (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind             text NOT NULL,
    -- Commands with the same key never run concurrently and run in event order.
    object_key       text NOT NULL,
    object_id        text NOT NULL,
    spec             jsonb NOT NULL,
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'running', 'applied', 'parked', 'superseded')),
    -- enqueueTime of the newest event the command serves; orders commands of one object.
    enqueue_time     timestamptz NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    -- Always written as the database's now() plus a delay, never with a worker's clock.
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_until      timestamptz,
    leased_by        text,
    last_status      integer,
    last_error       text,
    park_reason      text CHECK (park_reason IN
                     ('permanent_failure', 'retries_exhausted', 'erp_link_not_found', 'erp_link_disabled')),
    idempotency_key  uuid NOT NULL UNIQUE,
    traceparent      text,
    tracestate       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);

CREATE INDEX commands_due ON commands (next_attempt_at) WHERE state = 'pending';
CREATE INDEX commands_open_by_object ON commands (object_key, enqueue_time, id)
    WHERE state IN ('pending', 'running');
CREATE INDEX commands_running ON commands (lease_until) WHERE state = 'running';
CREATE INDEX commands_object ON commands (object_id);
CREATE INDEX commands_parked ON commands (park_reason) WHERE state = 'parked';

-- Which events a command serves. A command may serve several events and an event may
-- need several commands; the event is settled when all its commands are.
CREATE TABLE command_events (
    command_id  bigint NOT NULL REFERENCES commands (id),
    event_id    uuid NOT NULL REFERENCES events (id),
    PRIMARY KEY (command_id, event_id)
);

CREATE INDEX command_events_event ON command_events (event_id);

-- The object a worker is calling the platform about, until its lease ends. The primary
-- key allows one running command per object across every worker process.
CREATE TABLE object_leases (
    object_key   text PRIMARY KEY,
    command_id   bigint NOT NULL,
    lease_until  timestamptz NOT NULL,
    leased_by    text NOT NULL
);

-- Messages that could not become events, kept so operators can list and re-publish
-- them without draining the dead-letter queue.
CREATE TABLE dead_letters (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    reason          text NOT NULL,
    detail          text NOT NULL,
    routing_key     text NOT NULL,
    message_id      text,
    -- The envelope id, when the body had a readable one.
    event_id        uuid,
    size_bytes      integer NOT NULL,
    sha256          text NOT NULL,
    -- NULL when the body is longer than the size limit.
    body            bytea,
    received_at     timestamptz NOT NULL DEFAULT now(),
    republished_at  timestamptz
);

CREATE INDEX dead_letters_reason ON dead_letters (reason);

-- Every step of every event and command. Rows are only ever added.
CREATE TABLE audit (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    step            text NOT NULL,
    event_id        uuid,
    command_id      bigint,
    dead_letter_id  bigint,
    object_id       text,
    attempt         integer,
    http_status     integer,
    duration_ms     double precision,
    detail          jsonb,
    trace_id        text,
    actor           text
);

CREATE INDEX audit_event ON audit (event_id) WHERE event_id IS NOT NULL;
CREATE INDEX audit_command ON audit (command_id) WHERE command_id IS NOT NULL;
CREATE INDEX audit_object ON audit (object_id) WHERE object_id IS NOT NULL;

CREATE FUNCTION audit_is_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only: % is not allowed', TG_OP;
END
$$;

CREATE TRIGGER audit_append_only
    BEFORE UPDATE OR DELETE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_is_append_only();
