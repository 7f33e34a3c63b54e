-- syncgate 0.1.0 → 0.2.0: the sync-rules SQL functions. Exactly the functions of the 0.2.0 install
-- script that pgrx generates (checked by the upgrade test in src/sql_function_client_tests.rs).

CREATE  FUNCTION "evaluate_row"(
	"rules" text, /* Option < RawText < '_ > > */
	"table_name" text, /* Option < RawText < '_ > > */
	"row" jsonb /* Option < pgrx :: JsonB > */
) RETURNS TABLE (
	"bucket" TEXT,  /* String */
	"object_type" TEXT,  /* String */
	"object_id" TEXT,  /* String */
	"data" json  /* pgrx :: Json */
)
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'evaluate_row_wrapper';

CREATE  FUNCTION "user_buckets"(
	"rules" text, /* Option < RawText < '_ > > */
	"claims" jsonb, /* Option < pgrx :: JsonB > */
	"parameters" jsonb DEFAULT '{}' /* Option < pgrx :: JsonB > */
) RETURNS TABLE (
	"bucket" TEXT,  /* String */
	"definition" TEXT,  /* String */
	"priority" INT  /* i32 */
)
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'user_buckets_wrapper';

CREATE  FUNCTION "validate_rules"(
	"rules" text, /* Option < RawText < '_ > > */
	"publication" text DEFAULT 'powersync' /* Option < RawText < '_ > > */
) RETURNS TABLE (
	"severity" TEXT,  /* String */
	"line" INT,  /* Option < i32 > */
	"col" INT,  /* Option < i32 > */
	"message" TEXT  /* String */
)
STABLE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'validate_rules_wrapper';
