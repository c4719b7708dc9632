"""Coding jobs (CSV uploads and over-size batches, and training runs): one module per concept.

    settings  JobSettings: limits, chunking, time to live, lease and reconcile timing
    files     where a job's input, chunk parts and result lie on the shared volume; deleting them
    state     the job row: creating, listing, and every change of a job's state
    leases    who holds a job (Redis leases and sent markers) and the reconciler that re-sends lost jobs
    views     how the API shows a job (JobAccepted, JobView)

The DB row is the job: nothing outside `state` writes `Job.status` or progress. Callers import from the
module that owns a name (`from shared.jobs.state import finish`); this package re-exports nothing.
"""
