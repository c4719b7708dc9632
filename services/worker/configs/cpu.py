"""CPU prediction workers (`-Q cpu`): one process by default; torch threads use the process's CPU share."""

from services.worker.configs.base import *  # noqa: F403
