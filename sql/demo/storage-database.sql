-- docker-compose.yml: the gateway's bucket storage lives in a database of its own beside the demo's
-- (bucket storage must never be the source database; docs/config.md, Postgres storage).
CREATE DATABASE syncgate_storage;
