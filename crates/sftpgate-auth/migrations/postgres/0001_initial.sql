-- sftpgate-auth schema v1 (PostgreSQL). Times are Unix seconds (UTC), as in the SQLite
-- schema, so one set of queries serves both.

CREATE TABLE users (
    id               BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name             TEXT    NOT NULL UNIQUE,
    enabled          BOOLEAN NOT NULL DEFAULT TRUE,
    expires_at       BIGINT,
    -- argon2id PHC string; NULL: no password login.
    password_hash    TEXT,
    root_dir         TEXT    NOT NULL,
    -- Storage backend and its settings (JSON), room for backends other than 'local'.
    storage_kind     TEXT    NOT NULL DEFAULT 'local',
    storage_settings TEXT    NOT NULL DEFAULT '{}',
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL
);

CREATE TABLE public_keys (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- 'SHA256:…' as ssh-keygen -l prints it.
    fingerprint TEXT   NOT NULL,
    algorithm   TEXT   NOT NULL,
    -- The canonical authorized_keys line: ALGORITHM BASE64 [COMMENT].
    key_line    TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (user_id, fingerprint)
);

CREATE TABLE permissions (
    user_id     BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- A normalised virtual path: '/', '/in', '/a/b'.
    path_prefix TEXT   NOT NULL,
    -- Comma-separated flag names: 'list,download'; 'none' for no flag.
    flags       TEXT   NOT NULL,
    PRIMARY KEY (user_id, path_prefix)
);
