-- Source schema of the interop test (tests/interop/interop.mjs, gateway/tests/integration/interop.rs):
-- a small todo app. Users own lists and share them through list_members; announcements go to everyone.
-- No foreign keys: the upload backend applies client writes in queue order, one batch per transaction.
CREATE TABLE lists (
    id text PRIMARY KEY,
    owner_id text NOT NULL,
    name text NOT NULL
);

CREATE TABLE list_members (
    id text PRIMARY KEY,
    list_id text NOT NULL,
    user_id text NOT NULL
);

CREATE TABLE todos (
    id text PRIMARY KEY,
    list_id text NOT NULL,
    description text NOT NULL,
    completed boolean NOT NULL DEFAULT false,
    priority int4
);

CREATE TABLE announcements (
    id text PRIMARY KEY,
    body text NOT NULL
);

CREATE PUBLICATION powersync FOR TABLE lists, list_members, todos, announcements;
