"""Start a Dask cluster on SLURM for mammo-pipeline and print the MAMMO_DASK_SCHEDULER to export.

Run it on a login node (or in a long SLURM job) and keep it running while Dagster runs use the cluster:

    pip install dask-jobqueue
    python deploy/slurm/dask_cluster.py --jobs 8 --cores 16 --memory 64GB --queue cpu --walltime 08:00:00

Each SLURM job starts `--processes` single-threaded Dask workers in the mammo-pipeline environment, with
MAMMO_HOME on the cluster's shared file system (workers read landing/ and write cache/ by path).
"""

from __future__ import annotations

import argparse
import sys
import time

from dask_jobqueue import SLURMCluster


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=4, help="SLURM jobs (nodes or node slices) to start")
    p.add_argument("--cores", type=int, default=16, help="cores per SLURM job")
    p.add_argument("--processes", type=int, default=0, help="worker processes per job (0 = one per core)")
    p.add_argument("--memory", default="64GB", help="memory per SLURM job")
    p.add_argument("--queue", default=None, help="SLURM partition")
    p.add_argument("--account", default=None, help="SLURM account")
    p.add_argument("--walltime", default="08:00:00")
    p.add_argument("--port", type=int, default=8786, help="scheduler port (open it to the Dagster hosts)")
    args = p.parse_args()

    cluster = SLURMCluster(
        cores=args.cores,
        processes=args.processes or args.cores,
        memory=args.memory,
        queue=args.queue,
        account=args.account,
        walltime=args.walltime,
        scheduler_options={"port": args.port, "dashboard_address": ":8787"},
        job_script_prologue=[
            "source $HOME/mammo-pipeline/.venv/bin/activate",
            "set -a; source $HOME/mammo.env; set +a",  # deploy/env.example, exported
        ],
    )
    cluster.scale(jobs=args.jobs)
    print(f"export MAMMO_DASK_SCHEDULER={cluster.scheduler_address}", flush=True)
    print(cluster.job_script(), file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        cluster.close()


if __name__ == "__main__":
    main()
