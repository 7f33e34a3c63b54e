-- Demo schema: a small todo app. Users own lists, share them through list_members, and fill them with todos.
CREATE TABLE users (
    id text PRIMARY KEY,
    name text NOT NULL,
    email text
);

CREATE TABLE lists (
    id text PRIMARY KEY,
    owner_id text NOT NULL REFERENCES users (id),
    name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE list_members (
    list_id text NOT NULL REFERENCES lists (id),
    user_id text NOT NULL REFERENCES users (id),
    PRIMARY KEY (list_id, user_id)
);

CREATE TABLE todos (
    id text PRIMARY KEY,
    list_id text NOT NULL REFERENCES lists (id),
    description text NOT NULL,
    completed boolean NOT NULL DEFAULT false,
    priority int4,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The gateway replicates through this publication (pgoutput).
CREATE PUBLICATION powersync FOR TABLE users, lists, list_members, todos;
