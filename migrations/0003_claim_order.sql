-- Due commands in the exact order a claim takes them, so that a claim reads the
-- head of the line and stops, however long the backlog behind it.
DROP INDEX commands_due;
CREATE INDEX commands_due ON commands (next_attempt_at, id) WHERE state = 'pending';
