"""Checks of the SLURM cluster test (tests/cluster/slurm.sh check).

1. Every job of the Snakemake log (except the local target rule `all`) was submitted with sbatch, and
   SLURM's accounting (sacct) shows it COMPLETED with exit code 0:0, the CPUs and memory Snakemake
   gave the job (the rule's threads and mem_mb, the profile's default where a rule declares none),
   the partition the profile names, and a GPU exactly for the rules that declare gpu=1 (FAKE_GPUS=1).
2. The results of the SLURM run equal those of the local run of the same config: every table (parquet,
   csv, tsv, json) and every tensor file, leaving out wall-clock columns (seconds, time).

Prints sacct's own table for the run's jobs, then a verdict per check; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

SACCT_FIELDS = "JobID,JobName%36,Comment%66,State,ExitCode,Partition,Account,AllocCPUS,ReqMem,AllocTRES%44,Elapsed"
WALL_CLOCK = re.compile(r"(^|_)(seconds|secs|time|timestamp|duration|elapsed|wall)($|_)", re.I)
SKIP_DIRS = {"logs", "benchmarks"}


# ------------------------------------------------------------------------------------ Snakemake log
def parse_log(text: str) -> tuple[dict[int, dict], dict[int, str]]:
    """Jobs announced in the log (jobid -> rule, local?, threads, resources) and jobid -> SLURM job id."""
    jobs: dict[int, dict] = {}
    current = None
    for line in text.splitlines():
        head = re.match(r"^(local)?rule (\w+):$", line)
        if head:
            current = {"rule": head.group(2), "local": bool(head.group(1)), "threads": 1, "resources": {}}
            continue
        if current is None:
            continue
        field = re.match(r"^\s+(\w+): (.*)$", line)
        if not field:
            current = None
            continue
        key, value = field.groups()
        if key == "jobid":
            jobs[int(value)] = current
        elif key == "threads":
            current["threads"] = int(value)
        elif key == "resources":
            for item in re.split(r",\s*", value):
                name, _, val = item.partition("=")
                current["resources"][name] = val
    submitted = {int(a): b for a, b in re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", text)}
    return jobs, submitted


def sacct_rows(ids: list[str]) -> pd.DataFrame:
    cols = [f.split("%")[0] for f in SACCT_FIELDS.split(",")]
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", ",".join(ids), "-o", ",".join(cols)],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split("|") for line in out.splitlines() if line]
    return pd.DataFrame(rows, columns=cols).set_index("JobID")


def check_jobs(log: Path, profile: dict, fake_gpus: bool) -> list[str]:
    jobs, submitted = parse_log(log.read_text())
    errors = []
    remote = {jid: j for jid, j in jobs.items() if not j["local"]}
    local = sorted({j["rule"] for j in jobs.values() if j["local"]} - {"all"})
    if local:
        errors.append(f"rules run outside SLURM: {local}")
    if not remote:
        return ["no job in the Snakemake log"]
    missing = sorted(set(remote) - set(submitted))
    if missing:
        errors.append(f"Snakemake jobs without an sbatch submission: {[remote[j]['rule'] for j in missing]}")
    ids = [submitted[j] for j in sorted(remote) if j in submitted]
    subprocess.run(["sacct", "-X", "-j", ",".join(ids), "-o", SACCT_FIELDS], check=True)  # verbatim evidence
    acct = sacct_rows(ids)

    default_part = (profile.get("default-resources") or {}).get("slurm_partition")
    placed = profile.get("set-resources") or {}
    table = []
    for jid in sorted(remote, key=lambda j: int(submitted.get(j, 0))):
        job = remote[jid]
        slurm_id = submitted.get(jid)
        if slurm_id is None:
            continue
        res = job["resources"]
        gpu = int(res.get("gpu", 0) or 0)
        cpus = int(res["cpus_per_gpu"]) * gpu if gpu and "cpus_per_gpu" in res else job["threads"]
        want = {"State": "COMPLETED", "ExitCode": "0:0", "AllocCPUS": str(cpus), "ReqMem": f"{res['mem_mb']}M",
                "Partition": (placed.get(job["rule"]) or {}).get("slurm_partition", default_part),
                "Comment": f"rule_{job['rule']}"}
        if slurm_id not in acct.index:
            errors.append(f"SLURM job {slurm_id} ({job['rule']}) unknown to sacct")
            continue
        got = acct.loc[slurm_id]
        bad = [f"{k}={got[k]!r} (want {v!r})" for k, v in want.items()
               if not (got[k] == v or (k == "Comment" and got[k].startswith(v + "_wildcards_")))]
        has_gpu = "gres/gpu=1" in got["AllocTRES"]
        if fake_gpus and has_gpu != bool(gpu):
            bad.append(f"AllocTRES={got['AllocTRES']!r} but the rule declares gpu={gpu}")
        if bad:
            errors.append(f"SLURM job {slurm_id} ({job['rule']}): " + ", ".join(bad))
        table.append((slurm_id, job["rule"], job["threads"], res.get("mem_mb"), gpu, got["State"], got["AllocCPUS"],
                      got["ReqMem"], got["Partition"], "gpu" if has_gpu else "-"))
    print()
    print(pd.DataFrame(table, columns=["slurm_job", "rule", "threads", "mem_mb", "gpu", "State", "AllocCPUS",
                                       "ReqMem", "Partition", "gres"]).to_string(index=False))
    print(f"\n{len(ids)} SLURM jobs for {len(remote)} Snakemake jobs; rules: "
          f"{len({j['rule'] for j in remote.values()})}; GPU jobs: {sum(1 for r in table if r[4])}")
    return errors


# ------------------------------------------------------------------------------------------ results
def result_files(root: Path) -> set[str]:
    keep = {".parquet", ".csv", ".tsv", ".json", ".safetensors"}
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and p.suffix in keep and not SKIP_DIRS & set(p.relative_to(root).parts[:1])}


def without_wall_clock(obj):
    if isinstance(obj, dict):
        return {k: without_wall_clock(v) for k, v in obj.items() if not WALL_CLOCK.search(k)}
    if isinstance(obj, list):
        return [without_wall_clock(v) for v in obj]
    return obj


def frame(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
    else:
        df = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
    return df[[c for c in df.columns if not WALL_CLOCK.search(str(c))]]


def compare(rel: str, a: Path, b: Path, rtol: float) -> str | None:
    """None when equal, else what differs."""
    if a.suffix == ".json":
        ja, jb = (without_wall_clock(json.loads(p.read_text())) for p in (a, b))
        return None if ja == jb else "json differs"
    if a.suffix == ".safetensors":
        from safetensors.numpy import load_file

        ta, tb = load_file(str(a)), load_file(str(b))
        if ta.keys() != tb.keys():
            return "tensor names differ"
        worst = max((float(np.max(np.abs(ta[k].astype(np.float64) - tb[k].astype(np.float64))))
                     if ta[k].size else 0.0) for k in ta)
        ok = all(np.allclose(ta[k], tb[k], rtol=rtol, atol=0) for k in ta)
        return None if ok else f"tensors differ (max |diff| {worst:.3g})"
    fa, fb = frame(a), frame(b)
    try:
        pd.testing.assert_frame_equal(fa, fb, check_exact=rtol == 0, rtol=rtol or 1e-5, atol=0)
    except AssertionError as err:
        return " ".join(str(err).split())[:300]
    return None


def check_results(local: Path, slurm: Path, rtol: float) -> list[str]:
    la, lb = result_files(local), result_files(slurm)
    errors = []
    if la != lb:
        errors.append(f"files only local: {sorted(la - lb)[:10]}, only SLURM: {sorted(lb - la)[:10]}")
    common = sorted(la & lb)
    differ = {rel: why for rel in common if (why := compare(rel, local / rel, slurm / rel, rtol))}
    errors += [f"{rel}: {why}" for rel, why in differ.items()]
    board = pd.read_parquet(slurm / "leaderboard" / "leaderboard.parquet")
    runs = pd.read_csv(slurm / "runs.tsv", sep="\t")
    rows = [r for r in common if r.startswith("runs/") and r.endswith("row.parquet")]
    print(f"\ncompared {len(common)} result files (tables, json, tensors; wall-clock columns left out), "
          f"including leaderboard/leaderboard.parquet ({len(board)} rows), {len(rows)} run rows of {len(runs)} runs, "
          f"probe/facts.parquet and probe/novel.parquet: {len(common) - len(differ)} equal, {len(differ)} differ"
          + (f" (rtol {rtol})" if rtol else " (exactly)"))
    return errors


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", type=Path, required=True, help="log of the SLURM run of Snakemake")
    ap.add_argument("--profile", type=Path, required=True, help="the profile the SLURM run used")
    ap.add_argument("--local", type=Path, required=True, help="results/ of the local run")
    ap.add_argument("--slurm", type=Path, required=True, help="results/ of the SLURM run")
    ap.add_argument("--fake-gpus", type=int, default=1)
    ap.add_argument("--rtol", type=float, default=0.0, help="relative tolerance for numbers (0: exact)")
    args = ap.parse_args()
    import yaml

    profile = yaml.safe_load(args.profile.read_text())
    errors = check_jobs(args.log, profile, bool(args.fake_gpus))
    errors += check_results(args.local, args.slurm, args.rtol)
    for e in errors:
        print("FAIL:", e)
    print("\ncluster check:", "FAILED" if errors else "OK (sacct evidence and results match)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
