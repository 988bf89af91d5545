#!/bin/bash
# Leader failover of the control plane (issue 19): three `roam scheduler`
# replicas on one real etcd; each round kill -9s the leader and times until
# another replica reports itself leader (GET /v1/schedulers), then restarts
# the killed one as a follower. Baseline: the lease TTL itself.
#
#   cargo build -p roam && TTL=3s ROUNDS=10 bench/leader-failover.sh
#
# Needs etcd (scripts/setup), curl and python3.
TTL=${TTL:-3s}
R=${ROAM_BIN:-${CARGO_TARGET_DIR:-target}/debug/roam}
D=$(mktemp -d)
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
EC=$(port); EP=$(port)
etcd --name b --data-dir $D/etcd --listen-client-urls http://127.0.0.1:$EC --advertise-client-urls http://127.0.0.1:$EC --listen-peer-urls http://127.0.0.1:$EP --initial-advertise-peer-urls http://127.0.0.1:$EP --initial-cluster b=http://127.0.0.1:$EP >/dev/null 2>&1 &
ETCD=$!
sleep 2
declare -a PIDS URLS
for i in 0 1 2; do
  P=$(port)
  $R scheduler --listen 127.0.0.1:$P --data-dir $D/s$i --store etcd=http://127.0.0.1:$EC --leader-ttl $TTL >$D/s$i.log 2>&1 &
  PIDS[$i]=$!; URLS[$i]=https://127.0.0.1:$P
  sleep 1
done
TOKEN=$(cat $D/s0/admin.token)
CA=$D/s0/ca.crt
leader() { # leader url as seen by replica $1
  curl -s -m 1 --cacert $CA -H "authorization: Bearer $TOKEN" ${URLS[$1]}/v1/schedulers | python3 -c 'import sys,json
try:
  v=json.load(sys.stdin); print(next((r["url"] for r in v["replicas"] if r["leader"]),""))
except Exception: print("")'
}
for round in $(seq 1 ${ROUNDS:-10}); do
  L=""
  until [ -n "$L" ]; do for i in 0 1 2; do [ -n "${PIDS[$i]}" ] && L=$(leader $i) && [ -n "$L" ] && break; done; sleep 0.05; done
  for i in 0 1 2; do [ "${URLS[$i]}" = "$L" ] && K=$i; done
  T0=$(date +%s.%N)
  kill -9 ${PIDS[$K]}; wait ${PIDS[$K]} 2>/dev/null
  NEW=""
  while true; do
    for i in 0 1 2; do [ $i = $K ] && continue; N=$(leader $i); if [ -n "$N" ] && [ "$N" != "$L" ]; then NEW=$N; break; fi; done
    [ -n "$NEW" ] && break; sleep 0.02
  done
  T1=$(date +%s.%N)
  echo "round $round: $(python3 -c "print(round($T1-$T0,3))") s"
  # restart the killed one on its port, as a follower
  P=${URLS[$K]##*:}
  $R scheduler --listen 127.0.0.1:$P --data-dir $D/s$K --store etcd=http://127.0.0.1:$EC --leader-ttl $TTL >>$D/s$K.log 2>&1 &
  PIDS[$K]=$!
  sleep 1.5
done
kill ${PIDS[@]} $ETCD 2>/dev/null; wait 2>/dev/null
rm -rf $D
