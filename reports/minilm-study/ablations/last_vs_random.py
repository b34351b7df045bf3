#!/usr/bin/env python3
"""The last-step criterion against a random architecture of the same size, paired by task and
seed, from a petnas-analyze report's data/runs.csv (the claims table pairs each ablation with
the paper's setting only). Usage: last_vs_random.py three-tasks/data/runs.csv"""
import csv
import statistics
import sys

rows = {r["id"]: r for r in csv.DictReader(open(sys.argv[1])) if r["status"] == "completed"}
print("space,mode,budget,wins,ties,losses,median_diff_points")
for space, budget in [("bitfit", "5000"), ("mam16", "270912")]:
    for mode in "su":
        d = []
        for task in ["mrpc", "stsb", "cola"]:
            for seed in range(3):
                a = rows[f"{task}-{space}-{mode}{budget}-last-same-s{seed}"]
                b = rows[f"{task}-{space}-{mode}{budget}-random-same-s{seed}"]
                d.append(float(a["score"]) - float(b["score"]))
        w, t, l = sum(x > 0 for x in d), sum(x == 0 for x in d), sum(x < 0 for x in d)
        print(f"{space},{'structured' if mode == 's' else 'unstructured'},{budget},{w},{t},{l},{statistics.median(d):+.2f}")
