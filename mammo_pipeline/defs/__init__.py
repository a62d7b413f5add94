"""Dagster only: thin assets, checks, sensors and schedules over the domain modules."""
