-- Shared data of the rule suites in this directory: two orgs, four users, three projects.
INSERT INTO orgs (id, name) VALUES ('acme', 'Acme'), ('globex', 'Globex');

INSERT INTO users (id, org_id, name, is_admin) VALUES
    ('alice', 'acme', 'Alice', true),
    ('bob', 'acme', 'Bob', false),
    ('carol', 'globex', 'Carol', false),
    ('dave', NULL, 'Dave', false);

INSERT INTO projects (id, org_id, name) VALUES
    ('rocket', 'acme', 'Rocket'),
    ('anvil', 'acme', 'Anvil'),
    ('widget', 'globex', 'Widget');

INSERT INTO project_members (project_id, user_id, role) VALUES
    ('rocket', 'alice', 'owner'),
    ('rocket', 'bob', 'member'),
    ('anvil', 'alice', 'owner'),
    ('widget', 'carol', 'owner');

INSERT INTO notes (id, owner_id, project_id, body, status, urgent) VALUES
    ('n1', 'alice', 'rocket', 'Fuel', 'open', true),
    ('n2', 'alice', 'anvil', 'Drop test', 'done', false),
    ('n3', 'bob', 'rocket', 'Paint', 'open', false),
    ('n4', 'carol', 'widget', 'Spin', 'open', true),
    ('n5', 'dave', NULL, 'Loose end', 'open', false);

INSERT INTO announcements (id, title, published) VALUES
    ('a1', 'Welcome', true),
    ('a2', 'Draft', false);
