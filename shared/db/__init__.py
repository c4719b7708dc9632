"""Metadata DB: SQLAlchemy 2 tables and session factory."""
