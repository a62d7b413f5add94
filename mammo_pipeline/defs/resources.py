"""The `mammo` resource: the Settings object, read from MAMMO_* environment variables.

Fields left empty fall back to the environment, so the same Definitions run on a laptop, in CI and in
production; the Launchpad can still override the few knobs people change per run.
"""

from __future__ import annotations

import dagster as dg

from mammo_pipeline.settings import Settings


class MammoSettings(dg.ConfigurableResource):
    """Paths and knobs of mammo-pipeline (see the README's configuration table)."""

    home: str = ""  # empty: MAMMO_HOME, else ./mammo-home
    workers: int = 0  # 0: MAMMO_WORKERS, else one per core
    pretrained: str = ""  # '' | 'imagenet' | 'none'
    dask_scheduler: str = ""  # empty: MAMMO_DASK_SCHEDULER, else the local process pool

    def get(self) -> Settings:
        """The resolved Settings (environment first, then the fields set here)."""
        overrides: dict[str, object] = {}
        if self.workers:
            overrides["workers"] = self.workers
        if self.pretrained:
            overrides["pretrained"] = self.pretrained
        if self.dask_scheduler:
            overrides["dask_scheduler"] = self.dask_scheduler
        if self.home:
            import os

            env = dict(os.environ, MAMMO_HOME=self.home)
            return Settings.from_env(env, **overrides)
        return Settings.from_env(**overrides)
