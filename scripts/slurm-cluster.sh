#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for tbnn's `slurm` tests and for trying the
# cluster commands of the README: munged, MariaDB, slurmdbd (accounting: submitit polls sacct),
# slurmctld and slurmd, started without systemd and stopped by their PIDs.
#
#   sudo scripts/slurm-cluster.sh install   # Debian's packages (slurm-wlm munge slurmdbd mariadb-server)
#   sudo scripts/slurm-cluster.sh start     # write the configs, start the daemons, wait for the node
#   scripts/slurm-cluster.sh status         # sinfo
#   sudo scripts/slurm-cluster.sh stop      # stop the daemons this script started
#
# One partition, `cpu` (the default), holding this machine as SLURM sees it (`slurmd -C`).
# EnforcePartLimits=ALL: a job asking more than the partition has fails at submission
# instead of pending. Needs root (the daemons' users and folders are the packages' own).
# Files: /etc/slurm/{slurm,slurmdbd}.conf (only ones this script wrote are rewritten),
# state under /var/spool/slurm{ctld,d}, logs under /var/log/slurm, PIDs under $PIDS (munged's
# and MariaDB's in their own run folders).
set -euo pipefail

PIDS=/run/tbnn-slurm
MARK="# written by tbnn scripts/slurm-cluster.sh"
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
DB_PASS=tbnn-slurmdbd
PARTITION=cpu

die() { echo "slurm-cluster: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "run as root (it starts system daemons)"; }

install_packages() {
  need_root
  command -v apt-get >/dev/null || die "apt-get not found: this script sets up SLURM on Debian or Ubuntu"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge slurmdbd mariadb-server >/dev/null \
    || { DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null &&
         DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge slurmdbd mariadb-server >/dev/null; }
}

ours_or_absent() {  # refuse to overwrite a config someone else wrote
  [ ! -e "$1" ] || grep -qF "$MARK" "$1" || die "$1 exists and was not written by this script; move it away first"
}

pidfile() {  # munged and MariaDB keep theirs in their own run folders (munged checks its ownership)
  case $1 in munged) echo /run/munge/munged.pid ;; mariadb) echo /run/mysqld/mariadb.pid ;; *) echo "$PIDS/$1.pid" ;; esac
}
alive() { [ -f "$(pidfile "$1")" ] && kill -0 "$(cat "$(pidfile "$1")")" 2>/dev/null; }

wait_for() {  # wait_for WHAT SECONDS CMD...: until CMD succeeds
  local what=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "$what did not come up within ${secs}s (logs: /var/log/slurm, /var/log/munge)"
}

write_configs() {
  local host node
  host=$(hostname -s)
  node=$(slurmd -C | head -1 | sed 's/ UpTime=.*//')
  ours_or_absent "$CONF"; ours_or_absent "$DBD_CONF"
  cat > "$CONF" <<EOF
$MARK
ClusterName=tbnn
SlurmctldHost=$host
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$PIDS/slurmctld.pid
SlurmdPidFile=$PIDS/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
EnforcePartLimits=ALL
JobRequeue=1
ReturnToService=2
MpiDefault=none
KillWait=30
MinJobAge=600
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
$node State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE DefMemPerCPU=2048 State=UP
EOF
  cat > "$DBD_CONF" <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
PidFile=$PIDS/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  chown slurm:slurm "$DBD_CONF"; chmod 600 "$DBD_CONF"  # slurmdbd refuses it otherwise
}

start() {
  need_root
  command -v slurmctld >/dev/null || die "SLURM is not installed: run $0 install first"
  mkdir -p "$PIDS" /run/munge /run/mysqld /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  chown munge:munge /run/munge; chown mysql:mysql /run/mysqld
  chown slurm:slurm /var/spool/slurmctld /var/log/slurm "$PIDS"; chmod 755 "$PIDS"
  write_configs
  if ! alive munged; then
    runuser -u munge -- /usr/sbin/munged --pid-file="$(pidfile munged)" >/dev/null
    wait_for munged 10 munge -n
  fi
  if ! alive mariadb; then
    runuser -u mysql -- /usr/sbin/mariadbd --pid-file="$(pidfile mariadb)" >>/var/log/slurm/mariadb.log 2>&1 &
    wait_for MariaDB 30 mysqladmin ping
    mysql -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  fi
  if ! alive slurmdbd; then
    slurmdbd
    wait_for slurmdbd 30 sacctmgr -n list cluster
  fi
  sacctmgr -i -Q add cluster tbnn >/dev/null 2>&1 || true
  alive slurmctld || slurmctld
  alive slurmd || slurmd
  wait_for "the node" 60 bash -c "sinfo -h -p $PARTITION -o %T | grep -qE '^(idle|mixed|allocated)'"
  echo "slurm-cluster: up (partition $PARTITION: $(sinfo -h -p $PARTITION -o '%c CPUs, %m MB'))"
}

stop() {
  need_root
  local name pid
  for name in slurmd slurmctld slurmdbd mariadb munged; do
    [ -f "$(pidfile $name)" ] || continue
    pid=$(cat "$(pidfile $name)")
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$(pidfile $name)"
  done
  echo "slurm-cluster: stopped"
}

case "${1:-}" in
  install) install_packages ;;
  start) start ;;
  stop) stop ;;
  status) sinfo ;;
  *) die "usage: $0 install|start|stop|status" ;;
esac
