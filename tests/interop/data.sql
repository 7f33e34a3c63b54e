-- Rows every interop scenario starts with (each scenario adds its own users and lists, see interop.mjs).
INSERT INTO announcements (id, body) VALUES
    ('welcome', 'Welcome to syncgate'),
    ('maintenance', 'No maintenance planned');
