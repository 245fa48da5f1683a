#!/usr/bin/env bash
# Feasibility of clones from a memory snapshot (issue 26), measured with
# the real image: one guest booted through hostd gives the domain XML; a
# template copy of it (with a VM generation ID device, <genid/>) boots cold,
# its filesystems are frozen through the guest agent, its memory is saved
# with QEMU's migration to a file, and N clones are started at once from
# that file (libvirt starts each with `-incoming file:…`, its own name,
# UUID, genid, ports and a qcow2 overlay on the template's frozen disk).
# Prints the template's boot and save time and size, each clone's time to
# an answering guest agent, site and SSH banner, and the identity each clone
# starts with, then after hostd's planned identity reset (new SSH host keys,
# machine-id). Asserts nothing; run alone: it measures time.
#   scripts/bench-clone.sh [N]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
prepare_host
LABEL=bench-clone
. scripts/realenv.sh
realenv_up
start_hostd
N="${1:-10}"

curl -fsS -X POST "$API/auth/register" -H 'content-type: application/json' \
  -d '{"email":"clone@example.com","username":"clone","password":"correct horse"}' >/dev/null
TOKEN=$(curl -fsS -X POST "$API/auth/login" -d 'username=clone&password=correct horse' | jq -r .access_token)
curl -fsS -X POST "$API/host" -H "Authorization: Bearer $TOKEN" > "$WORK/host.json"
is_ready() {
  curl -fsS "$API/host/my" -H "Authorization: Bearer $TOKEN" > "$WORK/my.json" || return 1
  [ "$(jq -r .status.phase "$WORK/my.json")" = Ready ]
}
wait_until "$READY_TIMEOUT" 1 is_ready || fail "not Ready"
DOM="hostd-$(jq -r .id "$WORK/my.json")"
# QEMU (user libvirt-qemu) writes the memory file and reads the overlays.
BENCH="$STATE_DIR/bench-clone-$run_id"
mkdir -p "$BENCH"; chown libvirt-qemu:libvirt-qemu "$BENCH"; chmod 0700 "$BENCH"
bench_cleanup() {
  python3 scripts/bench-clone.py cleanup "$BENCH" "$N" || true
  rm -rf "$BENCH"
}
CLEANUP_HOOKS+=(bench_cleanup)
step "template: boot, freeze, save"
python3 scripts/bench-clone.py template "$BENCH" "$DOM" "$STATE_DIR/pools/$INSTANCE"
step "$N clones at once"
python3 scripts/bench-clone.py clones "$BENCH" "$N"
