"""GPU prediction workers (`-Q gpu`): one process per GPU, CUDA through the same inference core."""

from services.worker.configs.base import *  # noqa: F403

# Two processes on one GPU would hold two copies of the model and fight over it.
worker_concurrency = 1
