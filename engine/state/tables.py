"""The names of the ledger's tables: owned by the ledger, read by the SQL that joins engine state.

Names only: no I/O, no imports, so the pure SQL compiler may use them without pulling in a database driver.
"""

LEDGER_TABLE = "engine_ledger"
ENTRIES_TABLE = "engine_entries"
TAGS_TABLE = "engine_tags"
SUPPRESSIONS_TABLE = "engine_suppressions"
UNSUBSCRIBES_TABLE = "engine_unsubscribes"
GONE_CONTACTS_TABLE = "engine_gone_contacts"
COUPON_CODES_TABLE = "engine_coupon_codes"
COUPON_CLAIMS_TABLE = "engine_coupon_claims"
EVENTS_TABLE = "engine_events"
WATERMARKS_TABLE = "engine_watermarks"
SETTLED_TABLE = "engine_settled"
