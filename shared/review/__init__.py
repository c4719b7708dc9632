"""The review workflow: a job's queue of rows that need a human coder, their decisions, and what comes out.

    results    a finished job's result read back as rows (and counted by route: auto-coded, queue, failed)
    decisions  the coder's decisions and their audit trail (rows in the metadata DB)
    audit      the seeded sample of auto-coded rows a coder may check
    exports    the reviewed result (final_code, coded_by, final_status) and the corrections file

Callers import from the module that owns a name; this package re-exports nothing. Nothing here imports the
model stack.
"""
