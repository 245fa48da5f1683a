#!/usr/bin/env bash
# End-to-end test of two hypervisor nodes with real guests: the implicit node
# (qemu:///system) and a second libvirtd on this machine in its own mount
# namespace (scripts/node-libvirtd.sh), added with `hostd node add`. Two
# hostings created at once are placed one per node and both are served; then
# the second node dies (its libvirtd, virtlogd and guests killed): within
# HOSTD_NODE_DOWN_SECS it is NodeReady=False and its hosting Unknown with
# NodeReachable=False, while the first node's hosting stays Ready and served
# and nothing of the dead node's hosting appears on the live one. When the
# daemon returns, its hosting is started again there (its uploaded file
# intact) and runs once, on that node only. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

LABEL=e2e-nodes
. scripts/realenv.sh
NODE=n2
DOWN_SECS=10

node_cleanup() {
  local uri d
  uri=$(./scripts/node-libvirtd.sh uri "$NODE")
  if virsh -c "$uri" version >/dev/null 2>&1; then
    for d in $(virsh -c "$uri" list --all --name | grep '^hostd-' || true); do
      virsh -c "$uri" destroy "$d" >/dev/null 2>&1; virsh -c "$uri" undefine --checkpoints-metadata "$d" >/dev/null 2>&1
    done
  fi
  ./scripts/node-libvirtd.sh stop "$NODE" >/dev/null 2>&1
  rm -rf "$STATE_DIR/pools/$INSTANCE@$NODE"
}
CLEANUP_HOOKS+=(node_cleanup)

realenv_up
step "second node: a libvirtd of its own in a mount namespace"
URI2=$(./scripts/node-libvirtd.sh start "$NODE")
# Both guests boot cold and at once (clones live on the implicit node only).
start_hostd HOSTD_CLONE_TEMPLATES=false HOSTD_BOOT_CONCURRENCY=2 HOSTD_NODE_DOWN_SECS=$DOWN_SECS

sql() { su postgres -c "psql -d $DB -tAc \"$1\""; }
step "hostd node add $NODE $URI2"
"$BIN" node add "$NODE" "$URI2" --address 127.0.0.1 || fail "node add failed"
node_ready() { [ "$(sql "select ready from nodes where name = '$1'")" = "$2" ]; }
node_health() { [ "$(sql "select health from nodes where name = '$1'")" = "$2" ]; }
wait_until 30 0.5 node_ready "$NODE" t || { "$BIN" node list; fail "node $NODE never became ready"; }
"$BIN" node list

register() {  # name → token
  curl -fsS -X POST "$API/auth/register" -H 'content-type: application/json' \
    -d "{\"email\":\"$1@example.com\",\"username\":\"$1\",\"password\":\"correct horse\"}" >/dev/null
  curl -fsS -X POST "$API/auth/login" -d "username=$1&password=correct horse" | jq -r .access_token
}
ssh-keygen -q -t ed25519 -N '' -f "$WORK/key"
body=$(jq -nc --arg k "$(cat "$WORK/key.pub")" '{ssh_public_keys: [$k]}')
step "two hostings created at once"
T1=$(register alice); T2=$(register bob)
curl -fsS -X POST "$API/host" -H "Authorization: Bearer $T1" -H 'content-type: application/json' -d "$body" > "$WORK/h1.json" &
p1=$!
curl -fsS -X POST "$API/host" -H "Authorization: Bearer $T2" -H 'content-type: application/json' -d "$body" > "$WORK/h2.json" &
p2=$!
wait "$p1" "$p2"
ready() {  # token, file → 0 when Ready
  curl -fsS "$API/host/my" -H "Authorization: Bearer $1" > "$2" || return 1
  jq -e '.status.phase == "Ready" and .status.observed_generation == .generation' "$2" >/dev/null
}
t0=$(date +%s)
wait_until "$READY_TIMEOUT" 1 ready "$T1" "$WORK/m1.json" || { jq .status "$WORK/m1.json"; fail "alice's hosting not Ready"; }
wait_until "$READY_TIMEOUT" 1 ready "$T2" "$WORK/m2.json" || { jq .status "$WORK/m2.json"; fail "bob's hosting not Ready"; }
step "both Ready after $(( $(date +%s) - t0 )) s"
N1=$(jq -r .status.node "$WORK/m1.json"); N2=$(jq -r .status.node "$WORK/m2.json")
echo "alice on $N1, bob on $N2"
[ "$N1" != "$N2" ] || fail "both hostings were placed on $N1: placement does not spread"
jq -r '.events[] | select(.reason == "Placed") | .message' "$WORK/m1.json" "$WORK/m2.json"
# The token of the hosting on the second node, and the other's.
if [ "$N1" = "$NODE" ]; then TD=$T1; MD=m1; TL=$T2; ML=m2; else TD=$T2; MD=m2; TL=$T1; ML=m1; fi
site() { echo "http://127.0.0.1:$NGINX_PORT/$(jq -r .user_id "$WORK/$1.json")/"; }
SITE_D=$(site "$MD"); SITE_L=$(site "$ML")
ID_D=$(jq -r .id "$WORK/$MD.json"); ID_L=$(jq -r .id "$WORK/$ML.json")

step "each domain runs on its own node only"
on() { virsh -c "$1" list --name | grep -c "$2" || true; }
[ "$(on "$URI2" "$ID_D")" = 1 ] && [ "$(on qemu:///system "$ID_D")" = 0 ] || fail "$ID_D is not (only) on $NODE"
[ "$(on qemu:///system "$ID_L")" = 1 ] && [ "$(on "$URI2" "$ID_L")" = 0 ] || fail "$ID_L is not (only) on local"
curl -fsS "$SITE_D" | grep -q Welcome || fail "the site on $NODE is not served"
curl -fsS "$SITE_L" | grep -q Welcome || fail "the site on local is not served"

step "an upload on the $NODE guest"
SSH_D=$(jq -r .status.ssh_port "$WORK/$MD.json")
echo "kept-$run_id" > "$WORK/upload.txt"
scp -q -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR \
  -o ConnectTimeout=20 -i "$WORK/key" -P "$SSH_D" "$WORK/upload.txt" ubuntu@127.0.0.1:/var/www/html/upload.txt
ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR \
  -i "$WORK/key" -p "$SSH_D" ubuntu@127.0.0.1 sync
[ "$(curl -fsS "$SITE_D/upload.txt")" = "kept-$run_id" ] || fail "upload not served"

step "node $NODE dies: its libvirtd, virtlogd and guests killed"
t_kill=$(date +%s.%N)
./scripts/node-libvirtd.sh kill "$NODE"
wait_until 20 0.2 node_ready "$NODE" f || fail "node $NODE still ready"
t_unreachable=$(date +%s.%N)
wait_until $(( DOWN_SECS + 20 )) 0.2 node_health "$NODE" Down || fail "node $NODE not marked Down"
t_down=$(date +%s.%N)
unknown() { curl -fsS "$API/host/my" -H "Authorization: Bearer $TD" > "$WORK/u.json" && jq -e '.status.phase == "Unknown"' "$WORK/u.json" >/dev/null; }
wait_until 30 0.5 unknown || { jq .status "$WORK/u.json"; fail "the hosting on the dead node is not Unknown"; }
python3 -c "print('e2e-nodes: after the kill, node not ready in %.1f s, Down in %.1f s (HOSTD_NODE_DOWN_SECS=$DOWN_SECS, counted from its last good heartbeat), hosting Unknown in %.1f s' % ($t_unreachable - $t_kill, $t_down - $t_kill, $(date +%s.%N) - $t_kill))"
jq -e '.status.conditions[] | select(.type == "NodeReachable" and .status == "False")' "$WORK/u.json" >/dev/null ||
  { jq .status "$WORK/u.json"; fail "no NodeReachable=False"; }
"$BIN" node list
step "the live node's hosting is untouched; nothing of the dead one appears there"
sleep 3
ready "$TL" "$WORK/l.json" || { jq .status "$WORK/l.json"; fail "the hosting on local is disturbed"; }
curl -fsS "$SITE_L" | grep -q Welcome || fail "the site on local stopped being served"
[ "$(virsh -c qemu:///system list --all --name | grep -c "$ID_D" || true)" = 0 ] || fail "the dead node's hosting was recreated on local"
[ "$(virsh -c qemu:///system list --name | grep -c "$ID_L")" = 1 ] || fail "the local guest is not running"

step "node $NODE returns: its hosting runs again there, once"
./scripts/node-libvirtd.sh start "$NODE" >/dev/null
t_back=$(date +%s)
wait_until 60 0.5 node_ready "$NODE" t || fail "node $NODE not ready again"
wait_until "$READY_TIMEOUT" 1 ready "$TD" "$WORK/$MD.json" || { jq .status "$WORK/$MD.json"; fail "the hosting on $NODE did not come back"; }
step "Ready again $(( $(date +%s) - t_back )) s after the node returned"
jq -r '.events[] | select(.reason == "NodeDown" or .reason == "NodeBack") | "\(.reason): \(.message)"' "$WORK/$MD.json"
[ "$(curl -fsS "$SITE_D/upload.txt")" = "kept-$run_id" ] || fail "the upload did not survive"
[ "$(on "$URI2" "$ID_D")" = 1 ] && [ "$(virsh -c qemu:///system list --all --name | grep -c "$ID_D" || true)" = 0 ] ||
  fail "the hosting does not run exactly once, on $NODE"
step "passed"
