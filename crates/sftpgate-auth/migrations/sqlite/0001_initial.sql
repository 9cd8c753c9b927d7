-- sftpgate-auth schema v1 (SQLite). Times are Unix seconds (UTC); the PostgreSQL schema is
-- the same with its own types, so one set of queries serves both.

CREATE TABLE users (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    name             TEXT    NOT NULL UNIQUE,
    enabled          INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    expires_at       INTEGER,
    -- argon2id PHC string; NULL: no password login.
    password_hash    TEXT,
    root_dir         TEXT    NOT NULL,
    -- Storage backend and its settings (JSON), room for backends other than 'local'.
    storage_kind     TEXT    NOT NULL DEFAULT 'local',
    storage_settings TEXT    NOT NULL DEFAULT '{}',
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
) STRICT;

CREATE TABLE public_keys (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- 'SHA256:…' as ssh-keygen -l prints it.
    fingerprint TEXT    NOT NULL,
    algorithm   TEXT    NOT NULL,
    -- The canonical authorized_keys line: ALGORITHM BASE64 [COMMENT].
    key_line    TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    UNIQUE (user_id, fingerprint)
) STRICT;

CREATE TABLE permissions (
    user_id     INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- A normalised virtual path: '/', '/in', '/a/b'.
    path_prefix TEXT    NOT NULL,
    -- Comma-separated flag names: 'list,download'; 'none' for no flag.
    flags       TEXT    NOT NULL,
    PRIMARY KEY (user_id, path_prefix)
) STRICT;
