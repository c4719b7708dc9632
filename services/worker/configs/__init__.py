"""Celery configuration: `base` plus one module per worker type (cpu, gpu, training)."""
