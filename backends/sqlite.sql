-- Schema of the SQLite result store (backends/sqlite.py).
CREATE TABLE IF NOT EXISTS taskmesh_results (
    key     TEXT PRIMARY KEY,
    value   BLOB NOT NULL,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS taskmesh_members (
    key     TEXT NOT NULL,
    member  TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (key, member)
);
