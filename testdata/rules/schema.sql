-- Shared schema of the rule suites in this directory (the demo app's suite uses sql/demo/ instead).
-- No publication here: the runner creates `powersync` FOR ALL TABLES.
CREATE TABLE orgs (
    id text PRIMARY KEY,
    name text NOT NULL
);

CREATE TABLE users (
    id text PRIMARY KEY,
    org_id text REFERENCES orgs (id),
    name text NOT NULL,
    is_admin boolean NOT NULL DEFAULT false
);

CREATE TABLE projects (
    id text PRIMARY KEY,
    org_id text NOT NULL REFERENCES orgs (id),
    name text NOT NULL,
    archived boolean NOT NULL DEFAULT false
);

-- Many-to-many: users ↔ projects.
CREATE TABLE project_members (
    project_id text NOT NULL REFERENCES projects (id),
    user_id text NOT NULL REFERENCES users (id),
    role text NOT NULL DEFAULT 'member',
    PRIMARY KEY (project_id, user_id)
);

CREATE TABLE notes (
    id text PRIMARY KEY,
    owner_id text NOT NULL REFERENCES users (id),
    project_id text REFERENCES projects (id),
    body text NOT NULL,
    status text NOT NULL DEFAULT 'open',
    urgent boolean NOT NULL DEFAULT false
);

CREATE TABLE announcements (
    id text PRIMARY KEY,
    title text NOT NULL,
    published boolean NOT NULL DEFAULT true
);

-- Value mapping: one column per kind of Postgres value.
CREATE TABLE samples (
    id text PRIMARY KEY,
    small smallint,
    big bigint,
    ratio double precision,
    amount numeric(10, 2),
    flag boolean,
    tags text[],
    doc jsonb,
    day date,
    at timestamptz
);
