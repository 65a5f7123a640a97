-- Run once by the postgres image on an empty data directory (docker-entrypoint-initdb.d),
-- as the superuser: the sink's own role, NOT a superuser, owning the database it writes.
-- `callsync db migrate` then creates the tables as that owner.
CREATE ROLE callsync LOGIN PASSWORD 'callsync' NOSUPERUSER NOCREATEDB NOCREATEROLE;
CREATE DATABASE callsync OWNER callsync;
