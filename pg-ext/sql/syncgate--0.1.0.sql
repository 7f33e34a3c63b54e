-- syncgate 0.1.0, the first release: the install script `cargo pgrx install --release` generated for it
-- (kept so that `CREATE EXTENSION syncgate VERSION '0.1.0'` works and the upgrade path can be tested;
-- pgrx only copies upgrade scripts, scripts/pg-ext-install.sh copies this one).

-- src/lib.rs:17
-- syncgate::version
CREATE  FUNCTION "version"() RETURNS TEXT /* & '_ str */
STRICT
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'version_wrapper';
