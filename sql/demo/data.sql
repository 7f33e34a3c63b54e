INSERT INTO users (id, name, email) VALUES
    ('alice', 'Alice', 'alice@example.com'),
    ('bob', 'Bob', 'bob@example.com'),
    ('carol', 'Carol', NULL);

INSERT INTO lists (id, owner_id, name, created_at) VALUES
    ('groceries', 'alice', 'Groceries', '2026-01-05 09:00:00+00'),
    ('trip', 'bob', 'Trip to Lisbon', '2026-02-10 18:30:00+00'),
    ('chores', 'carol', 'Chores', '2026-03-01 07:15:00+00');

-- Bob shares his trip list with Alice.
INSERT INTO list_members (list_id, user_id) VALUES ('trip', 'alice');

INSERT INTO todos (id, list_id, description, completed, priority, created_at) VALUES
    ('t1', 'groceries', 'Milk', false, 2, '2026-01-05 09:01:00+00'),
    ('t2', 'groceries', 'Bread', true, NULL, '2026-01-05 09:02:00+00'),
    ('t3', 'trip', 'Book flights', false, 1, '2026-02-10 18:31:00+00'),
    ('t4', 'chores', 'Vacuum', false, 3, '2026-03-01 07:16:00+00');
