#!/usr/bin/env python3
"""Solve a knapsec `.npz` MCKP instance with HiGHS (scipy.optimize.milp) and compare with
`knapsec knapsack solve-mckp` on the same instance, in the same run, on the same machine.

    knapsec knapsack synth --arch resnet18-cifar -o d.safetensors
    knapsec knapsack export-npz --arch resnet18-cifar --table d.safetensors --budget 6% -o i.npz
    python3 highs_compare.py i.npz 33423 [--knapsec PATH]

Needs numpy and scipy. Prints one JSON object: both objectives, their relative difference, and
both wall-clock times (knapsec's includes process start and reading the file; HiGHS's
excludes building the model). The MILP: x[i,k] in {0,1}, sum_k x[i,k] = 1 per class,
sum cost·x <= budget, minimise sum value·x; padding options (+inf) are left out.
"""

import argparse
import json
import subprocess
import time

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_matrix


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("instance")
    ap.add_argument("budget", type=int)
    ap.add_argument("--knapsec", default="knapsec")
    ap.add_argument("--time-limit", type=float, default=900.0)
    a = ap.parse_args()

    z = np.load(a.instance)
    costs, values, counts = z["costs"], z["values"], z["counts"]
    n, k = costs.shape
    mask = (np.arange(k)[None, :] < counts[:, None]) & np.isfinite(values)
    rows, cols = np.nonzero(mask)
    c = values[rows, cols]
    w = costs[rows, cols].astype(float)
    m = len(c)
    one_per_class = csr_matrix((np.ones(m), (rows, np.arange(m))), shape=(n, m))
    budget_row = csr_matrix((w, (np.zeros(m, dtype=int), np.arange(m))), shape=(1, m))
    cons = [LinearConstraint(one_per_class, 1, 1), LinearConstraint(budget_row, -np.inf, a.budget)]
    t0 = time.perf_counter()
    res = milp(c, constraints=cons, integrality=np.ones(m), bounds=Bounds(0, 1),
               options={"time_limit": a.time_limit, "mip_rel_gap": 1e-9})
    highs_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    out = subprocess.run([a.knapsec, "knapsack", "solve-mckp", a.instance, "--budget", str(a.budget), "--json"],
                         check=True, capture_output=True, text=True)
    knapsec_wall = time.perf_counter() - t0
    ks = json.loads(out.stdout)
    ho = float(res.fun) if res.x is not None else None
    print(json.dumps({
        "instance": a.instance, "classes": int(n), "budget": a.budget,
        "highs_status": res.message, "highs_objective": ho, "highs_seconds": highs_s,
        "knapsec_objective": ks["objective"], "knapsec_optimal": ks["optimal"],
        "knapsec_seconds": ks["seconds"], "knapsec_wall_seconds": knapsec_wall,
        "relative_difference": None if ho is None else (ho - ks["objective"]) / abs(ks["objective"]),
        "speedup_wall": highs_s / knapsec_wall,
    }))


if __name__ == "__main__":
    main()
