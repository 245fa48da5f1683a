#!/usr/bin/env bash
# Provisioning benchmark with real guests, in one run (templates for clones
# off: bench-burst.sh compares clones):
# - warm path: with a warm pool of 2 booted guests (HOSTD_WARM_POOL=2), time
#   from POST /api/v1/host to Ready (this generation: personalised, site
#   through nginx and SSH banner) for 1 hosting, then (pool refilled) for 2
#   hostings in a row;
# - cold path: for 1 and for 4 concurrent hostings (no pool), POST -> Ready,
#   and side by side the raw boot of the same image (same domain XML and
#   seed that hostd rendered, fresh overlays) started with `virsh create`
#   until its first HTTP 200, and the ratio (hostd's overhead over the raw
#   guest boot).
# Usage: scripts/bench-provision.sh [N ...]   (cold sizes; default: 1 4)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
prepare_host
LABEL=bench-provision
. scripts/realenv.sh
SIZES=("$@"); [ ${#SIZES[@]} -gt 0 ] || SIZES=(1 4)
RAW_PREFIX="raw-$INSTANCE"
raw_cleanup() {
  for d in $(virsh -c qemu:///system list --all --name | grep "^$RAW_PREFIX-" || true); do
    virsh -c qemu:///system destroy "$d" >/dev/null 2>&1 || true
  done
}
CLEANUP_HOOKS=(raw_cleanup)
realenv_up
now() { date +%s.%N; }
base=$(jq -r '"'"$STATE_DIR"'/images/debian-12/disk.qcow2"' <<< '{}')

sql() { su postgres -c "psql -d $DB -tAc \"$1\""; }
pool_ready_n() {  # succeeds when at least $1 pool guests are Ready
  [ "$(sql "select count(*) from hostings h join hosting_status s on s.hosting_id = h.id
            where h.warm_pool and h.deletion_requested_at is null and s.phase = 'Ready'
              and s.observed_generation = h.generation")" -ge "$1" ]
}
new_user() {  # name → token
  curl -fsS -X POST "$API/auth/register" -H 'content-type: application/json' \
    -d "{\"email\":\"$1@example.com\",\"username\":\"$1\",\"password\":\"correct horse\"}" >/dev/null
  curl -fsS -X POST "$API/auth/login" -d "username=$1&password=correct horse" | jq -r .access_token
}
# POST -> Ready of this generation, for each token in turn (one POST right
# after the other); prints the seconds of each, and fails if one was not a claim.
warm_run() {
  local t ts=() t0=() out=() j i
  for t in "$@"; do t0+=("$(now)"); curl -fsS -X POST "$API/host" -H "Authorization: Bearer $t" > "$WORK/warm.json"
    [ "$(jq -r .status.phase "$WORK/warm.json")" = Provisioning ] || fail "not a claim: $(cat "$WORK/warm.json")"; ts+=("$t"); done
  for i in "${!ts[@]}"; do
    until j=$(curl -fsS "$API/host/my" -H "Authorization: Bearer ${ts[$i]}") &&
          jq -e '.status.phase == "Ready" and .status.observed_generation == .generation' <<< "$j" >/dev/null; do
      sleep 0.1
      python3 -c "import sys; sys.exit(0 if $(now) - ${t0[$i]} < 300 else 1)" || fail "warm hosting not Ready in 300 s"
    done
    out+=("$(python3 -c "print(round($(now) - ${t0[$i]}, 2))")")
  done
  echo "${out[*]}"
}
step "warm path: HOSTD_WARM_POOL=2, waiting for two Ready pool guests"
start_hostd HOSTD_WARM_POOL=2 HOSTD_CLONE_TEMPLATES=false
wait_until "$READY_TIMEOUT" 1 pool_ready_n 2 || fail "the pool did not fill"
w1=$(warm_run "$(new_user warm1)")
step "warm path: 1 hosting: $w1 s; waiting for the pool to refill"
wait_until "$READY_TIMEOUT" 1 pool_ready_n 2 || fail "the pool did not refill"
w2=$(warm_run "$(new_user warm2a)" "$(new_user warm2b)")
step "warm path: 2 hostings in a row: $w2 s"
for u in warm1 warm2a warm2b; do
  t=$(curl -fsS -X POST "$API/auth/login" -d "username=$u&password=correct horse" | jq -r .access_token)
  curl -fsS -X DELETE "$API/host/my" -H "Authorization: Bearer $t" >/dev/null
done
kill "$HOSTD_PID"; wait "$HOSTD_PID" 2>/dev/null || true; HOSTD_PID=""
step "cold path: no pool (HOSTD_WARM_POOL=0 shrinks it to nothing)"
start_hostd HOSTD_WARM_POOL=0 HOSTD_CLONE_TEMPLATES=false
pool_gone() { [ "$(sql "select count(*) from hostings where warm_pool or deletion_requested_at is not null")" = 0 ]; }
wait_until 300 1 pool_gone || fail "the pool and the warm hostings were not removed"
accel=$(curl -fsS "$API/health/detailed" | jq -r .domain_type)

results=()
R=0
for N in "${SIZES[@]}"; do
  R=$((R + 1))   # a round number: sizes may repeat (`1 1 1`)
  step "N=$N: hostd, POST -> Ready"
  tokens=(); t0=()
  for i in $(seq 1 "$N"); do
    u="bench${R}n${N}x$i"
    curl -fsS -X POST "$API/auth/register" -H 'content-type: application/json' \
      -d "{\"email\":\"$u@example.com\",\"username\":\"$u\",\"password\":\"correct horse\"}" >/dev/null
    tokens+=("$(curl -fsS -X POST "$API/auth/login" -d "username=$u&password=correct horse" | jq -r .access_token)")
  done
  for i in $(seq 0 $((N - 1))); do
    t0+=("$(now)")
    curl -fsS -X POST "$API/host" -H "Authorization: Bearer ${tokens[$i]}" >/dev/null
  done
  ready=(); ids=()
  for i in $(seq 0 $((N - 1))); do ready+=(""); ids+=(""); done
  # Records each hosting's time to Ready; succeeds once all are.
  all_ready() {
    local i j left=0
    for i in $(seq 0 $((N - 1))); do
      [ -n "${ready[$i]}" ] && continue
      j=$(curl -fsS "$API/host/my" -H "Authorization: Bearer ${tokens[$i]}")
      if [ "$(jq -r .status.phase <<< "$j")" = Ready ]; then
        ready[$i]=$(python3 -c "print($(now) - ${t0[$i]})"); ids[$i]=$(jq -r .id <<< "$j")
      else left=$((left + 1)); fi
    done
    [ $left -eq 0 ]
  }
  wait_until "$READY_TIMEOUT" 1 all_ready || fail "hostings not Ready after ${READY_TIMEOUT}s"
  # Where hostd's time went, from its events (seconds after Created).
  for i in $(seq 0 $((N - 1))); do
    sql "select string_agg(reason || ' +' || round(extract(epoch from at - (select min(at) from events e2
           where e2.hosting_id = e.hosting_id))::numeric, 2), ', ' order by at)
         from events e where hosting_id = '${ids[$i]}'" | sed "s/^/  hosting $i events: /"
  done
  # Keep what hostd rendered, then delete the hostings.
  mkdir -p "$WORK/raw$R"; chmod 0755 "$WORK" "$WORK/raw$R"   # qemu runs as libvirt-qemu
  for i in $(seq 0 $((N - 1))); do
    virsh -c qemu:///system dumpxml --inactive "hostd-${ids[$i]}" > "$WORK/raw$R/$i.xml"
    cp "$STATE_DIR/pools/$INSTANCE/hostd-${ids[$i]}-seed.iso" "$WORK/raw$R/$i.iso"
    curl -fsS -X DELETE "$API/host/my" -H "Authorization: Bearer ${tokens[$i]}" >/dev/null
  done
  for i in $(seq 0 $((N - 1))); do
    gone() { [ "$(curl -s -o /dev/null -w '%{http_code}' "$API/host/my" -H "Authorization: Bearer ${tokens[$i]}")" = 404 ]; }
    wait_until 120 1 gone || fail "hosting $i not deleted"
  done

  step "N=$N: raw guests, virsh create -> first HTTP 200"
  ports=(); sports=(); rt0=(); rready=(); rssh=()
  for i in $(seq 0 $((N - 1))); do
    qemu-img create -q -f qcow2 -F qcow2 -b "$base" "$WORK/raw$R/$i.qcow2" 10G
    chmod 0666 "$WORK/raw$R/$i.qcow2" "$WORK/raw$R/$i.iso"
    hp=$(free_port); sp=$(free_port); ports+=("$hp"); sports+=("$sp"); rready+=(""); rssh+=("")
    python3 - "$WORK/raw$R/$i.xml" "$RAW_PREFIX-$R-$i" "$WORK/raw$R/$i.qcow2" "$WORK/raw$R/$i.iso" "$sp" "$hp" <<'PY'
import sys, xml.etree.ElementTree as ET
path, name, disk, seed, ssh, http = sys.argv[1:]
t = ET.parse(path); d = t.getroot()
d.find('name').text = name
for tag in ('uuid', 'metadata', 'title'):
    e = d.find(tag)
    if e is not None: d.remove(e)
for disk_el in d.find('devices').findall('disk'):
    src = disk_el.find('source')
    disk_el.set('type', 'file')
    dev = disk_el.find('target').get('dev')
    for k in list(src.attrib): del src.attrib[k]
    src.set('file', disk if dev == 'vda' else seed)
iface = d.find('devices').find('interface')
fwd = iface.findall('portForward')
fwd[0].find('range').set('start', ssh); fwd[1].find('range').set('start', http)
# The same serial console as hostd's guests (a log file), so both boots pay
# for the same console output.
for tag in ('serial', 'console'):
    ser = d.find('devices').find(tag)
    if ser is not None and ser.find('source') is not None:
        ser.find('source').set('path', path[:-4] + '.console.log')
t.write(path)
PY
  done
  for i in $(seq 0 $((N - 1))); do
    rt0+=("$(now)")
    virsh -c qemu:///system create "$WORK/raw$R/$i.xml" >/dev/null
  done
  # Records each raw guest's time to its first HTTP 200; succeeds once all answered.
  # Also the first SSH banner (what hostd's Ready needs besides HTTP), probed
  # like hostd does: only once the site answers.
  all_raw_up() {
    local i left=0
    for i in $(seq 0 $((N - 1))); do
      if [ -z "${rready[$i]}" ]; then
        if [ "$(curl -s -m 3 -o /dev/null -w '%{http_code}' "http://127.0.0.1:${ports[$i]}/")" = 200 ]; then
          rready[$i]=$(python3 -c "print($(now) - ${rt0[$i]})")
        else left=$((left + 1)); fi
      fi
      if [ -z "${rssh[$i]}" ] && [ -n "${rready[$i]}" ]; then
        if python3 - "${sports[$i]}" <<'PY'
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
    s.sendall(b"SSH-2.0-bench\r\n"); s.settimeout(2)
    sys.exit(0 if s.recv(8).startswith(b"SSH-") else 1)
except OSError:
    sys.exit(1)
PY
        then rssh[$i]=$(python3 -c "print($(now) - ${rt0[$i]})")
        else left=$((left + 1)); fi
      fi
    done
    [ $left -eq 0 ]
  }
  wait_until "$READY_TIMEOUT" 0.5 all_raw_up || fail "raw guests did not answer after ${READY_TIMEOUT}s"
  raw_cleanup
  results+=("$(python3 - "$N" "${ready[*]}" "${rready[*]}" "${rssh[*]}" <<'PY'
import sys
n = sys.argv[1]; h, r, rs = ([float(x) for x in a.split()] for a in sys.argv[2:5])
mh, mr = sum(h)/len(h), sum(r)/len(r)
mb = sum(max(a, b) for a, b in zip(r, rs)) / len(r)
print(f"| {n} | {mh:.1f} s | {max(h):.1f} s | {mr:.1f} s | {max(r):.1f} s | {mh/mr:.2f} | {mb:.1f} s | {mh/mb:.2f} |")
PY
)")
done
echo
echo "acceleration: $accel"
python3 - "$w1" "$w2" <<'PY'
import statistics, sys
one = [float(x) for x in sys.argv[1].split()]; two = [float(x) for x in sys.argv[2].split()]
allw = one + two
print("| warm path (pool of 2) | POST->Ready |")
print("|---|---:|")
print(f"| 1 hosting | {one[0]:.2f} s |")
print(f"| 2 hostings in a row | {two[0]:.2f} s, {two[1]:.2f} s |")
print(f"| p50 of the 3 | {statistics.median(allw):.2f} s |")
print()
PY
echo "| N concurrent | hostd POST->Ready (mean) | (max) | raw virsh create->HTTP 200 (mean) | (max) | ratio (mean) | raw ->HTTP 200 and SSH banner (mean) | ratio |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${results[@]}"
