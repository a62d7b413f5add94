"""Run every benchmark in turn (`make bench`); each prints its figure and its ratio against a baseline
measured in the same run. Pass names to run a subset: `python benchmarks/run_all.py infer normalize`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
# name -> arguments (sizes that finish in a few minutes each on 2 cores)
BENCHMARKS: dict[str, list[str]] = {
    "synth": [],
    "normalize": [],
    "index": ["--n", "4000"],
    "cache_memory": ["--n", "10000"],
    "cache_resume": ["--n", "600", "--kill-at", "450"],
    "train": [],
    "infer": ["--int8"],
    "dask": [],
    "label_app": ["--sizes", "10000,100000,1000000", "--n", "200"],
    "air": [],
}
# Run by name only (`python benchmarks/run_all.py learning_curve`): slow (learning_curve about 10 minutes,
# second_look_cv about 3 plus 5 the first time it builds its data set, candidate_recall 1 plus 5 to build its
# data set (the demo's drops), crops about 2 plus 5 to build its data
# set when no --data is given, realism and film_compression a few), needing a trained model (real_samples: the
# demo's, `--home`), or a library installed aside (table_format: deltalake), or a demo's home (study_points,
# demo_audit: `make demo` first).
EXTRA: dict[str, list[str]] = {
    "learning_curve": ["--baseline"],
    "second_look_cv": [],
    "candidate_recall": ["--data", "/tmp/mammo-demo-drops", "--demo-drops"],
    "crops": [],
    "realism": ["--studies", "40", "--scale", "0.25", "--limit", "0"],  # the README table's sample
    "film_compression": [],
    "real_samples": [],
    "representations": [],  # the current model (MAMMO_HOME or --home) on the real images in 16 representations
    "study_points": ["--home", "mammo-home"],
    "demo_audit": ["--home", "mammo-home"],
    "table_format": ["--slices", "20", "--rows", "5000", "--writers", "2", "--rounds", "5", "--repeat", "5"],
}


def main(names: list[str]) -> int:
    failed = []
    known = {**BENCHMARKS, **EXTRA}
    unknown = [name for name in names if name not in known]
    if unknown:  # before running anything: a typo would otherwise end a long run with a KeyError
        print(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    for name in names or list(BENCHMARKS):
        print(f"\n=== benchmarks/bench_{name}.py {' '.join(known[name])}", flush=True)
        code = subprocess.call([sys.executable, str(HERE / f"bench_{name}.py"), *known[name]])
        if code:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
