"""Ctrl-C in a terminal running `dagster asset materialize`: one interrupt ends the run and its pool workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mammo_pipeline import synth
from mammo_pipeline.landing import list_hospitals
from mammo_pipeline_tests.test_parallel import _running, interrupt_group

DAGSTER = Path(sys.executable).with_name("dagster")


@pytest.mark.skipif(not DAGSTER.exists(), reason="needs the dagster command beside this Python")
def test_one_ctrl_c_ends_a_materialization_whose_cache_is_rendering(tmp_path):
    """A user's report: SIGINT to the process group (a terminal's Ctrl-C) while `image_cache` rendered left the
    step process and its pool workers waiting on each other, the run STARTED for good (7 of 7 tries of a repro
    before the fix; the pool's workers took the interrupt too). Pool workers now ignore SIGINT and the step stops
    them (`parallel._stop`)."""
    home = tmp_path / "home"
    synth.generate_drops(home / "landing", hospitals=1, studies_per_hospital=40, scale=0.25, drop="d1", workers=2)
    hospital = list_hospitals(home / "landing")[0]
    env = {**os.environ, "MAMMO_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "MAMMO_WORKERS": "2"}
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    register = f"import dagster as dg; dg.DagsterInstance.get().add_dynamic_partitions('hospital', [{hospital!r}])"
    subprocess.run([sys.executable, "-c", register], env=env, check=True)  # as the landing sensor does
    log = tmp_path / "run.log"
    with log.open("w") as out:
        run = subprocess.Popen(
            [
                str(DAGSTER),
                "asset",
                "materialize",
                "-m",
                "mammo_pipeline.definitions",
                "--select",
                "dicom_index,image_cache",
                "--partition",
                hospital,
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = 'Started execution of step "image_cache"'  # its progress lines come by time, maybe only at the end
    deadline = time.monotonic() + 180
    while started not in log.read_text() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(3)  # rendering ~110 images takes 15 s or more: the pool is busy
    assert 'Finished execution of step "image_cache"' not in log.read_text() and run.poll() is None, (
        "the cache finished before it could be interrupted: " + log.read_text()[-2000:]
    )
    left = subprocess.run(["pgrep", "-g", str(run.pid)], capture_output=True, text=True).stdout.split()
    code = interrupt_group(run, timeout=60)
    time.sleep(1)
    alive = [int(pid) for pid in left if _running(int(pid))]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert code is not None and code != 0 and not alive, (code, alive)
