"""Queue and task names: the contract between the gateway (which sends tasks by name) and the workers.

Importing this module imports nothing else, so the gateway can use the names without the worker code.
"""

from __future__ import annotations

QUEUE_CPU = "cpu"
QUEUE_GPU = "gpu"
QUEUE_TRAINING = "training"
PREDICTION_QUEUES = (QUEUE_CPU, QUEUE_GPU)

TASK_PROCESS_JOB = "isco.jobs.process"  # args: [job_id]
TASK_SWEEP_EXPIRED = "isco.jobs.sweep_expired"  # no args
TASK_RECONCILE = "isco.jobs.reconcile"  # no args: re-send jobs that no live worker holds
TASK_TRAIN = "isco.training.run"  # args: [job_id]; the job row's options hold the training options
