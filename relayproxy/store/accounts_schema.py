"""The schema migration for dashboard users, sessions, setup tokens, key options and audit
(accounts.py uses it; schema.py runs it).

Key options live on ``api_keys`` itself, so admission reads them in the row it already reads:
``spend_limit_microusd`` (NULL = none), ``expires`` (``YYYY-MM-DD``, valid through that UTC day;
NULL = never), ``models`` (comma-separated allow-list; NULL = all), and the key's running
``spend_microusd`` (charges) and ``held_microusd`` (open holds), which count against the limit.
A hold names its key (``holds.key_id``), so settling or releasing it, the startup sweep included,
moves the key's totals in the same transaction as the account's.
"""

from __future__ import annotations

__all__ = ["EMAIL_MIGRATION", "MIGRATION", "THROTTLE_MIGRATION"]

MIGRATION = """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        email TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        account_id INTEGER NOT NULL REFERENCES accounts(id),
        admin INTEGER NOT NULL DEFAULT 0,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL
    );
    CREATE TABLE sessions (
        token_hash BLOB PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        csrf TEXT NOT NULL,
        created_at TEXT NOT NULL,
        last_seen_at TEXT NOT NULL,
        idle_expires_at TEXT NOT NULL,
        absolute_expires_at TEXT NOT NULL
    );
    CREATE INDEX sessions_user ON sessions(user_id);
    CREATE TABLE setup_tokens (
        token_hash BLOB PRIMARY KEY,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        used_at TEXT
    );
    ALTER TABLE api_keys ADD COLUMN spend_limit_microusd INTEGER;
    ALTER TABLE api_keys ADD COLUMN expires TEXT;
    ALTER TABLE api_keys ADD COLUMN models TEXT;
    ALTER TABLE api_keys ADD COLUMN spend_microusd INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE api_keys ADD COLUMN held_microusd INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE api_keys ADD COLUMN last_used_at TEXT;
    ALTER TABLE holds ADD COLUMN key_id TEXT REFERENCES api_keys(id);
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
"""

# Attempts counted in a window across workers and gateways (throttle.py): failed logins, mails sent.
THROTTLE_MIGRATION = """
    CREATE TABLE throttle_events (
        key BLOB NOT NULL,
        at TEXT NOT NULL
    );
    CREATE INDEX throttle_events_key ON throttle_events(key, at);
    CREATE INDEX throttle_events_at ON throttle_events(at);
"""

# Mailed links (email_tokens.py): sign-up verification and password reset, single-use, kept as
# the SHA-256 of their token. ``users.verified``: 0 for a sign-up whose address is not confirmed
# yet (only while [email] is configured); every user made before, or by the CLI, is verified.
EMAIL_MIGRATION = """
    ALTER TABLE users ADD COLUMN verified INTEGER NOT NULL DEFAULT 1;
    CREATE TABLE email_tokens (
        token_hash BLOB PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        purpose TEXT NOT NULL CHECK (purpose IN ('verify', 'reset')),
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        used_at TEXT
    );
    CREATE INDEX email_tokens_user ON email_tokens(user_id, purpose);
"""
