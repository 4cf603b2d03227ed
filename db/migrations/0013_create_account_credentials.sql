-- Each account's Gmail credential (an OAuth authorized-user grant or a service account key),
-- encrypted with AES-256-GCM. key_id names the key that sealed the row (derived from the key, so
-- a key is never named by hand); nonce is the 12 random bytes used once with it. The ciphertext is
-- bound to (user_id, kind) as associated data, so a row copied onto another user's fails to
-- decrypt. scope is the Gmail scope granted (gmail.readonly or gmail.metadata), kept in clear so
-- an operator can see it; the encrypted payload holds the authoritative copy.
CREATE TABLE account_credentials (
    user_id    text        PRIMARY KEY REFERENCES accounts (user_id) ON DELETE CASCADE,
    kind       text        NOT NULL CHECK (kind IN ('authorized_user', 'service_account')),
    scope      text        NOT NULL,
    key_id     text        NOT NULL,
    nonce      bytea       NOT NULL,
    ciphertext bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- What `inboxflow accounts rotate-key` scans: the rows not yet under the current key.
CREATE INDEX account_credentials_key_idx ON account_credentials (key_id);
