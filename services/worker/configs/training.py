"""Training workers (`-Q training`): one run at a time, hours allowed."""

from services.worker.configs.base import *  # noqa: F403

worker_concurrency = 1
# Training is not resumable chunk by chunk like a job: no soft hand-over, a generous hard limit.
task_soft_time_limit = None
task_time_limit = 24 * 3600
# A training run can legitimately run longer than a job; redelivering it early would start a second run.
broker_transport_options = {"visibility_timeout": 26 * 3600}
