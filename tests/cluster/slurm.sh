#!/usr/bin/env bash
# Proves profiles/slurm on a real, one-node SLURM cluster on this machine (`make test-cluster`).
#
#   bash tests/cluster/slurm.sh [all|up|run|check|stop|status]      (default: all)
#
#   all     up, run, check, then stop the daemons this call started
#   up      install (apt-get) and configure SLURM 22.05 + munge + slurmdbd/MariaDB, start the daemons,
#           make sure the executor plugin is importable
#   run     tiny-model workflow twice, with the config of tests/test_workflow.py: locally (--cores 2)
#           and through SLURM with a test copy of profiles/slurm (see write_test_profile below)
#   check   tests/cluster/check.py: sacct evidence per job, results of both runs equal
#           (run and check need the cluster up: `up` first, `stop` after)
#   stop    stop all five daemons by their pid files (also the ones an earlier call left running)
#   status  daemons, sinfo, squeue
#
# Needs root (or passwordless sudo) on a Debian 12 / Ubuntu machine with at least 2 CPUs and 10 GB of
# memory. It rewrites /etc/slurm/slurm.conf, gres.conf, slurmdbd.conf and a MariaDB snippet, so run it
# on a throwaway machine or CI container: it refuses to overwrite a slurm.conf it did not write.
# Systemd is not needed: the daemons are started directly and stopped by pid.
#
# Settings (environment):
#   PY              python with snakemake and the project installed (default: .venv/bin/python if present)
#   PLUGIN_TARGET   if set, install the executor plugin with `pip --target` into this folder and put it on
#                   PYTHONPATH instead of installing it into PY's environment (for a venv you must not touch)
#   WORK            scratch folder for both runs (default /tmp/stubborn-cluster-test; it is emptied)
#   FAKE_GPUS       1 (default): the node advertises one fake gres gpu (File=/dev/null) so GPU rules keep
#                   their --gpus=1 request; 0: the test profile maps GPU rules to gpu: 0 (no --gpus)
#   LOCAL_REF       results folder of an earlier local run of the same config, to skip the local run
#   RUN_TIMEOUT     seconds allowed for each workflow run (default 2400); then Snakemake gets SIGINT,
#                   which makes the plugin scancel its jobs
# Versions verified (tests/cluster/README.md): Slurm 22.05.8 (Debian 12), snakemake 9.27.1,
# snakemake-executor-plugin-slurm 2.8.0 with snakemake-executor-plugin-slurm-jobstep 0.6.1.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$REPO/tests/cluster"
if [[ -z "${PY:-}" ]]; then
    if [[ -x "$REPO/.venv/bin/python" ]]; then PY="$REPO/.venv/bin/python"; else PY=$(command -v python3); fi
fi
[[ $PY == */* ]] && PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"   # absolute, symlink kept
WORK=${WORK:-/tmp/stubborn-cluster-test}
FAKE_GPUS=${FAKE_GPUS:-1}
RUN_TIMEOUT=${RUN_TIMEOUT:-2400}
PLUGIN_VERSION=2.8.0
JOBSTEP_VERSION=0.6.1
CLUSTER=localcluster
ACCOUNT=snake
MARK="# written by tests/cluster/slurm.sh"
if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo -n"; fi
USER_NAME=$(id -un)
HOST=$(hostname -s)
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$REPO${PLUGIN_TARGET:+:$PLUGIN_TARGET}${PYTHONPATH:+:$PYTHONPATH}"

STARTED=()                       # daemons this call started, stopped again by `all`
declare -A T                     # step timings (seconds)
log() { printf '\n== %s  %s\n' "$(date +%T)" "$*"; }
die() { printf 'slurm.sh: %s\n' "$*" >&2; exit 1; }
timed() {                        # timed NAME command...: runs it, records its wall time in T[NAME]
    local name=$1 t0=$SECONDS; shift
    "$@"
    T[$name]=$((SECONDS - t0))
}

# ---------------------------------------------------------------------------------------- install
PKGS=(slurm-wlm munge slurmdbd mariadb-server)
install_packages() {
    local missing=()
    for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if ((${#missing[@]} == 0)); then echo "packages present: ${PKGS[*]}"; return; fi
    log "apt-get install ${missing[*]}"
    $SUDO apt-get update -qq
    # policy-rc.d (Docker images) keeps apt from starting the daemons; they are started below.
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# -------------------------------------------------------------------------------------- configure
CHANGED=0
put() {                          # put FILE MODE OWNER: stdin becomes FILE if its content differs
    local file=$1 mode=$2 owner=$3 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if ! $SUDO cmp -s "$tmp" "$file" 2>/dev/null; then
        $SUDO install -D -m "$mode" -o "${owner%:*}" -g "${owner#*:}" "$tmp" "$file"
        echo "wrote $file"
        CHANGED=1
    fi
    rm -f "$tmp"
}

profile_partitions() {           # "cpu gpu": the default partition first, then the others of the profile
    "$PY" - "$REPO/profiles/slurm/config.yaml" <<'EOF'
import sys, yaml
p = yaml.safe_load(open(sys.argv[1]))
default = (p.get("default-resources") or {}).get("slurm_partition") or "cpu"
others = {(r or {}).get("slurm_partition") for r in (p.get("set-resources") or {}).values()} - {None, default}
print(" ".join([default, *sorted(others)]))
EOF
}

configure() {
    [[ -f /etc/slurm/slurm.conf ]] && ! grep -qF "$MARK" /etc/slurm/slurm.conf &&
        die "/etc/slurm/slurm.conf was not written by this script; not overwriting it"
    getent hosts "$HOST" >/dev/null || echo "127.0.1.1 $HOST" | $SUDO tee -a /etc/hosts >/dev/null
    local node cpus mem parts gres_line="" gres_types=""
    node=$(slurmd -C | head -1)                     # NodeName=... CPUs=... RealMemory=...
    cpus=$(sed -E 's/.*CPUs=([0-9]+).*/\1/' <<<"$node")
    mem=$(sed -E 's/.*RealMemory=([0-9]+).*/\1/' <<<"$node")
    ((cpus >= 2)) || die "the node has $cpus CPU(s); the workflow's rules need 2 threads"
    node=$(sed -E "s/RealMemory=[0-9]+/RealMemory=$((mem * 90 / 100))/" <<<"$node")
    read -r -a parts <<<"$(profile_partitions)"
    if [[ $FAKE_GPUS == 1 ]]; then
        gres_types="GresTypes=gpu"; gres_line=" Gres=gpu:1"
        # File= is required: without it slurmd reports 0 GPUs and the node goes INVAL.
        printf '%s\nNodeName=%s Name=gpu File=/dev/null\n' "$MARK" "$HOST" | put /etc/slurm/gres.conf 644 root:root
    else
        if [[ -f /etc/slurm/gres.conf ]]; then $SUDO rm -f /etc/slurm/gres.conf; CHANGED=1; fi
    fi
    {
        echo "$MARK"
        cat <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$HOST
AuthType=auth/munge
SlurmUser=slurm
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# no cgroups: memory is a scheduling quantity only, not enforced
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
# refuse impossible requests at sbatch time instead of leaving them PENDING forever
EnforcePartLimits=ALL
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MinJobAge=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
AccountingStorageEnforce=associations
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/linux
$gres_types
$node$gres_line State=UNKNOWN
EOF
        local p default=YES
        for p in "${parts[@]}"; do
            echo "PartitionName=$p Nodes=$HOST Default=$default MaxTime=INFINITE State=UP"
            default=NO
        done
    } | put /etc/slurm/slurm.conf 644 root:root

    local pass
    pass=$($SUDO sed -n 's/^StoragePass=//p' /etc/slurm/slurmdbd.conf 2>/dev/null || true)
    [[ -n $pass ]] || pass=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
    put /etc/slurm/slurmdbd.conf 600 slurm:slurm <<EOF
$MARK
DbdHost=localhost
SlurmUser=slurm
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$pass
StorageLoc=slurm_acct_db
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
EOF
    put /etc/mysql/mariadb.conf.d/90-slurmdbd.cnf 644 root:root <<EOF
$MARK
[mysqld]
innodb_buffer_pool_size=512M
innodb_lock_wait_timeout=900
EOF
    $SUDO test -s /etc/munge/munge.key || $SUDO mungekey --create --force
    $SUDO install -d -o slurm -g slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
    DB_PASS=$pass
}

# ---------------------------------------------------------------------------------------- daemons
# name:pidfile, in start order
DAEMONS=(munged:/run/munge/munged.pid mariadbd:/run/mysqld/mysqld.pid slurmdbd:/run/slurmdbd.pid
         slurmctld:/run/slurmctld.pid slurmd:/run/slurmd.pid)
running() {                      # running NAME: its pid file names a live process of that name
    local name=$1 file pid
    file=$(pidfile "$name")
    pid=$($SUDO cat "$file" 2>/dev/null) || return 1
    [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]
}
pidfile() {
    local d
    for d in "${DAEMONS[@]}"; do if [[ ${d%%:*} == "$1" ]]; then echo "${d#*:}"; fi; done
}
wait_for() {                     # wait_for SECONDS WHAT command...
    local n=$1 what=$2 i; shift 2
    for ((i = 0; i < n; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
    die "timed out after ${n}s waiting for $what"
}

start_daemon() {
    local name=$1
    if running "$name"; then echo "$name already running"; return; fi
    case $name in
        munged)
            $SUDO install -d -o munge -g munge -m 755 /run/munge
            $SUDO runuser -u munge -- /usr/sbin/munged
            wait_for 10 munge munge -n ;;
        mariadbd)
            $SUDO install -d -o mysql -g mysql /run/mysqld /var/log/mysql
            $SUDO setsid /usr/sbin/mariadbd --user=mysql --log-error=/var/log/mysql/error.log \
                </dev/null >/dev/null 2>&1 &
            wait_for 60 MariaDB $SUDO mariadb -e 'SELECT 1' ;;
        slurmdbd)
            $SUDO /usr/sbin/slurmdbd
            wait_for 30 slurmdbd $SUDO sacctmgr -n list cluster ;;
        slurmctld)
            $SUDO /usr/sbin/slurmctld
            wait_for 30 slurmctld scontrol ping ;;
        slurmd)
            $SUDO /usr/sbin/slurmd ;;
    esac
    running "$name" || wait_for 10 "$name pid file" running "$name"
    echo "started $name (pid $($SUDO cat "$(pidfile "$name")"))"
    STARTED+=("$name")
}

stop_daemon() {
    local name=$1 file pid i
    running "$name" || return 0
    file=$(pidfile "$name"); pid=$($SUDO cat "$file")
    $SUDO kill -TERM "$pid"
    for ((i = 0; i < 30; i++)); do [[ -d /proc/$pid ]] || break; sleep 1; done
    if [[ -d /proc/$pid ]]; then $SUDO kill -KILL "$pid"; fi
    echo "stopped $name (pid $pid)"
}

stop_started() {                 # the daemons this call started, in reverse order
    local i
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do stop_daemon "${STARTED[i]}"; done
    STARTED=()
}

start_all() {
    local d i restarted=()
    if ((CHANGED)); then         # running daemons must re-read a changed config: restart them
        for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
            d=${DAEMONS[i]%%:*}
            [[ $d == munged ]] && continue
            running "$d" && { stop_daemon "$d"; restarted+=("$d"); }
        done
    fi
    start_daemon munged
    start_daemon mariadbd
    $SUDO mariadb <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
    start_daemon slurmdbd
    sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" || $SUDO sacctmgr -i add cluster "$CLUSTER"
    sacctmgr -n -P list account format=account | grep -qx "$ACCOUNT" ||
        $SUDO sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description=test Organization=test
    sacctmgr -n -P list assoc user="$USER_NAME" format=account | grep -qx "$ACCOUNT" ||
        $SUDO sacctmgr -i add user "$USER_NAME" Account="$ACCOUNT" DefaultAccount="$ACCOUNT"
    start_daemon slurmctld
    start_daemon slurmd
    wait_for 60 "the node to register" bash -c "sinfo -h -N -o %T | grep -Eq '^(idle|mixed|allocated)'"
    sinfo
    # a daemon that ran before this call keeps running afterwards, even if it was restarted
    local keep=() r
    for d in "${STARTED[@]}"; do
        for r in "${restarted[@]}"; do [[ $d == "$r" ]] && continue 2; done
        keep+=("$d")
    done
    STARTED=("${keep[@]}")
}

verify_cluster() {               # one tiny job through sbatch, then accounting must know it
    local id
    id=$(sbatch --parsable -t 1 -c 1 --mem 50 -o /dev/null --wrap 'true')
    wait_for 60 "sbatch smoke job $id" bash -c "sacct -n -X -P -j $id -o State | grep -qx COMPLETED"
    echo "smoke job $id COMPLETED (sacct)"
}

# --------------------------------------------------------------------------------- executor plugin
plugin_version() {
    "$PY" -c 'import importlib.metadata as m, snakemake_executor_plugin_slurm, snakemake_executor_plugin_slurm_jobstep
print(m.version("snakemake-executor-plugin-slurm"))' 2>/dev/null
}
ensure_plugin() {
    local v
    v=$(plugin_version || true)
    if [[ $v == "$PLUGIN_VERSION" ]]; then echo "snakemake-executor-plugin-slurm $v present"; return; fi
    if [[ -n $v ]]; then echo "found plugin $v, installing the verified $PLUGIN_VERSION"; fi
    if [[ -n ${PLUGIN_TARGET:-} ]]; then
        # --no-deps: the other requirements (snakemake-interface-*, pandas, numpy, throttler) come
        # with snakemake; the import check below catches a missing one.
        "$PY" -m pip install -q --disable-pip-version-check --no-deps --upgrade --target "$PLUGIN_TARGET" \
            "snakemake-executor-plugin-slurm==$PLUGIN_VERSION" \
            "snakemake-executor-plugin-slurm-jobstep==$JOBSTEP_VERSION"
    else
        "$PY" -m pip install -q --disable-pip-version-check "snakemake-executor-plugin-slurm==$PLUGIN_VERSION"
    fi
    v=$(plugin_version) || die "the plugin does not import with $PY"
    echo "installed snakemake-executor-plugin-slurm $v"
}

# -------------------------------------------------------------------------------------------- run
write_test_profile() {
    # The test profile is profiles/slurm/config.yaml itself plus a few local settings, so the partitions,
    # default memory/runtime and the per-rule placement under test are the real ones:
    #  - slurm-init-seconds-before-status-checks: 5 (default 40: each short job would wait >= 40 s)
    #  - slurm-keep-successful-logs: the per-job logs stay as evidence
    #  - GPU rules: FAKE_GPUS=1 keeps gpu=1 (--gpus=1, counted by the fake gres) and caps cpus_per_gpu
    #    at the node's CPUs; FAKE_GPUS=0 sets gpu: 0, so sbatch gets no --gpus and --cpus-per-task=threads.
    mkdir -p "$WORK/profile"
    "$PY" - "$REPO/profiles/slurm/config.yaml" "$WORK/profile/config.yaml" "$FAKE_GPUS" "$(nproc)" <<'EOF'
import sys, yaml
src, dst, fake_gpus, cpus = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
p = yaml.safe_load(open(src))
p["slurm-init-seconds-before-status-checks"] = 5
p["slurm-keep-successful-logs"] = True
default_part = p["default-resources"].get("slurm_partition")
for rule, res in (p.get("set-resources") or {}).items():
    if res.get("slurm_partition") == default_part:
        continue
    if fake_gpus:
        if "cpus_per_gpu" in res:
            res["cpus_per_gpu"] = min(res["cpus_per_gpu"], cpus)
    else:
        res["gpu"] = 0
yaml.safe_dump(p, open(dst, "w"), sort_keys=False)
EOF
    echo "test profile $WORK/profile/config.yaml:"; sed 's/^/    /' "$WORK/profile/config.yaml"
}

snakemake_run() {                # snakemake_run DIR LOG args...: the tiny config in DIR, SIGINT on timeout
    local dir=$1 logfile=$2; shift 2
    (cd "$REPO" && timeout -s INT -k 120 "$RUN_TIMEOUT" "$PY" -m snakemake -s "$REPO/Snakefile" -d "$dir" \
        --configfile "$dir/config.yaml" "$@") >"$logfile" 2>&1 || {
        tail -60 "$logfile"; die "snakemake failed in $dir (log: $logfile)"; }
    tail -3 "$logfile"
}

prepare_inputs() {
    if [[ -e $WORK ]]; then      # only a folder this script made (or an empty one) is emptied
        [[ -e $WORK/.cluster-test || -z $(ls -A "$WORK") ]] || die "WORK=$WORK is not a folder of this test"
        rm -rf "$WORK"
    fi
    mkdir -p "$WORK"; touch "$WORK/.cluster-test"
    (cd "$REPO" && CLUSTER_WORK="$WORK" "$PY" -m pytest -q -p no:cacheprovider --basetemp "$WORK/pytest" \
        tests/cluster/prepare_inputs.py) | tail -2
    rm -rf "$WORK/pytest"
    mkdir -p "$WORK/local" "$WORK/slurm"
    cp "$WORK/config.yaml" "$WORK/local/"; cp "$WORK/config.yaml" "$WORK/slurm/"
}

run_local() {
    if [[ -n ${LOCAL_REF:-} ]]; then
        echo "local reference: $LOCAL_REF (LOCAL_REF)"; ln -sfn "$LOCAL_REF" "$WORK/local/results"; return
    fi
    snakemake_run "$WORK/local" "$WORK/local.log" --cores 2
}

run_slurm() {
    write_test_profile
    snakemake_run "$WORK/slurm" "$WORK/slurm.log" --workflow-profile "$WORK/profile"
}

check() {
    "$PY" "$HERE/check.py" --log "$WORK/slurm.log" --profile "$WORK/profile/config.yaml" --local "$WORK/local/results" --slurm "$WORK/slurm/results" \
        --fake-gpus "$FAKE_GPUS"
}

status() {
    local d
    for d in "${DAEMONS[@]}"; do
        if running "${d%%:*}"; then echo "${d%%:*}: running"; else echo "${d%%:*}: stopped"; fi
    done
    sinfo 2>/dev/null || true; squeue 2>/dev/null || true
}

timings() {
    echo; echo "timings (s):"
    local k
    for k in install configure start verify plugin inputs local slurm check stop; do
        if [[ -n ${T[$k]:-} ]]; then printf '    %-10s %5s\n' "$k" "${T[$k]}"; fi
    done
    printf '    %-10s %5s\n' total "$SECONDS"
}

up() {
    timed install install_packages
    timed configure configure
    timed start start_all
    timed verify verify_cluster
    timed plugin ensure_plugin
}

case ${1:-all} in
    all)
        trap 'stop_started; timings' EXIT
        log "cluster up"; up
        log "inputs (tests/conftest.py fixtures)"; timed inputs prepare_inputs
        log "local run"; timed local run_local
        log "SLURM run"; timed slurm run_slurm
        log "check"; timed check check
        log "stop the daemons this call started: ${STARTED[*]:-none}"; timed stop stop_started ;;
    up) up; echo "running: ${STARTED[*]:-(all were running)}" ;;
    run) timed inputs prepare_inputs; timed local run_local; timed slurm run_slurm; timings ;;
    check) check ;;
    stop) for ((j = ${#DAEMONS[@]} - 1; j >= 0; j--)); do stop_daemon "${DAEMONS[j]%%:*}"; done; status ;;
    status) status ;;
    *) die "unknown command $1 (all|up|run|check|stop|status)" ;;
esac
