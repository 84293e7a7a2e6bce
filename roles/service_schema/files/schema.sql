-- The authentication service's schema (database authdb). Idempotent: every statement may run again.
-- Writes carry a client-chosen request_id so a write acknowledged to a client can be found after a disaster
-- (the drills measure RPO by looking up every journalled request_id).
CREATE TABLE IF NOT EXISTS users (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_uuid      uuid        NOT NULL DEFAULT gen_random_uuid(),
    email          text        NOT NULL,
    password_hash  text        NOT NULL,
    display_name   text,
    status         text        NOT NULL DEFAULT 'active'
                   CONSTRAINT users_status_check CHECK (status IN ('active', 'locked', 'deleted')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    last_login_at  timestamptz,
    CONSTRAINT users_user_uuid_key UNIQUE (user_uuid)
);
CREATE UNIQUE INDEX IF NOT EXISTS users_email_lower_key ON users (lower(email));
CREATE INDEX IF NOT EXISTS users_created_at_idx ON users (created_at);

CREATE TABLE IF NOT EXISTS platform_accounts (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id      bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    platform     text        NOT NULL
                 CONSTRAINT platform_accounts_platform_check
                 CHECK (platform IN ('steam', 'psn', 'xbox', 'epic', 'oculus', 'apple', 'google')),
    external_id  text        NOT NULL,
    linked_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT platform_accounts_platform_external_id_key UNIQUE (platform, external_id)
);
CREATE INDEX IF NOT EXISTS platform_accounts_user_id_idx ON platform_accounts (user_id);

CREATE TABLE IF NOT EXISTS token_blacklist (
    jti         uuid        PRIMARY KEY,
    user_id     bigint      REFERENCES users (id) ON DELETE SET NULL,
    reason      text        NOT NULL,
    revoked_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    CONSTRAINT token_blacklist_expiry_check CHECK (expires_at > revoked_at)
);
CREATE INDEX IF NOT EXISTS token_blacklist_expires_at_idx ON token_blacklist (expires_at);
CREATE INDEX IF NOT EXISTS token_blacklist_user_id_idx ON token_blacklist (user_id);

CREATE TABLE IF NOT EXISTS audit_logs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    user_id      bigint      REFERENCES users (id) ON DELETE SET NULL,
    event_type   text        NOT NULL
                 CONSTRAINT audit_logs_event_type_check
                 CHECK (event_type IN ('signup', 'login', 'login_failed', 'token_revoked', 'platform_linked', 'seed')),
    request_id   uuid        NOT NULL,
    region       text        NOT NULL,
    ip_address   inet,
    user_agent   text,
    details      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT audit_logs_request_id_key UNIQUE (request_id)
);
CREATE INDEX IF NOT EXISTS audit_logs_occurred_at_idx ON audit_logs (occurred_at);
CREATE INDEX IF NOT EXISTS audit_logs_user_id_occurred_at_idx ON audit_logs (user_id, occurred_at);

-- Written by the recovery runbooks (immersiverse.dr.token_revocations) when the revocation event stream could not
-- prove it covers the gap after a recovery point: every token issued before not_before is invalid. The service
-- checks a token's issue time against max(not_before) besides token_blacklist. One row per recovery (run_key).
CREATE TABLE IF NOT EXISTS token_revocation_cutoff (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    not_before  timestamptz NOT NULL,
    reason      text        NOT NULL,
    set_at      timestamptz NOT NULL DEFAULT now(),
    run_key     text        NOT NULL,
    CONSTRAINT token_revocation_cutoff_run_key_key UNIQUE (run_key)
);
