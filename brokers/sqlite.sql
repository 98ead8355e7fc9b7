-- Schema of the SQLite broker (brokers/sqlite.py). One row per message.
-- A message is ready when not_before has passed and it holds no live lease.
CREATE TABLE IF NOT EXISTS taskmesh_messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    queue       TEXT    NOT NULL,
    priority    INTEGER NOT NULL DEFAULT 0,
    not_before  REAL    NOT NULL,
    lease_until REAL,
    lease_token TEXT,
    deliveries  INTEGER NOT NULL DEFAULT 0,
    headers     TEXT    NOT NULL DEFAULT '{}',
    body        BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS taskmesh_messages_ready
    ON taskmesh_messages (queue, priority DESC, id);
