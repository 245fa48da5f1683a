#!/usr/bin/env bash
# Burst benchmark with real guests (issue 30), in one run: N users (default
# 10) create a default-size hosting at the same moment, a warm pool of
# BURST_POOL Ready guests (default 2, as in issue 30; 0 for none), the CPU
# overcommit raised so that all fit; each POST -> Ready is printed, with the
# median and the maximum, first with the boot gate off
# (HOSTD_BOOT_CONCURRENCY=0, every guest boots at once) and then with the
# gate at its default for this host. A hosting that is not Ready within
# BURST_TIMEOUT (default 900 s) is reported as such, not waited for.
# Usage: scripts/bench-burst.sh [N] [gate values...]   e.g. `10 0 2`
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
prepare_host
LABEL=bench-burst
. scripts/realenv.sh
N="${1:-10}"; shift || true
GATES=("$@"); [ ${#GATES[@]} -gt 0 ] || GATES=(0 default)
TIMEOUT="${BURST_TIMEOUT:-900}"
POOL="${BURST_POOL:-2}"
realenv_up
now() { date +%s.%N; }

summary=()
R=0
for gate in "${GATES[@]}"; do
  R=$((R + 1))
  env_gate=(); [ "$gate" = default ] || env_gate=("HOSTD_BOOT_CONCURRENCY=$gate")
  step "gate=$gate: $N concurrent creates"
  start_hostd HOSTD_REGISTER_PER_HOUR=1000 HOSTD_WARM_POOL="$POOL" HOSTD_CPU_OVERCOMMIT=16 HOSTD_HOST_RESERVED_MIB=512 "${env_gate[@]}"
  pool_ready() {
    [ "$(su postgres -c "psql -d $DB -tAc \"select count(*) from hostings h join hosting_status s on s.hosting_id = h.id
        where h.warm_pool and h.deletion_requested_at is null and s.phase = 'Ready' and s.observed_generation = h.generation\"")" -ge "$POOL" ]
  }
  wait_until 600 2 pool_ready || fail "the warm pool of $POOL did not become Ready"
  tokens=(); t0=(); ready=()
  for i in $(seq 1 "$N"); do
    u="burst${R}x$i"
    curl -fsS -X POST "$API/auth/register" -H 'content-type: application/json' \
      -d "{\"email\":\"$u@example.com\",\"username\":\"$u\",\"password\":\"correct horse\"}" >/dev/null
    tokens+=("$(curl -fsS -X POST "$API/auth/login" -d "username=$u&password=correct horse" | jq -r .access_token)")
    ready+=("")
  done
  posts=()
  for i in $(seq 0 $((N - 1))); do
    t0+=("$(now)")
    curl -fsS -X POST "$API/host" -H "Authorization: Bearer ${tokens[$i]}" >/dev/null &
    posts+=($!)
  done
  # Only the POSTs: a bare `wait` would wait for hostd too.
  wait "${posts[@]}"
  deadline=$(( $(date +%s) + TIMEOUT ))
  while :; do
    left=0
    for i in $(seq 0 $((N - 1))); do
      [ -n "${ready[$i]}" ] && continue
      j=$(curl -fsS "$API/host/my" -H "Authorization: Bearer ${tokens[$i]}")
      if jq -e '.status.phase == "Ready" and .status.observed_generation == .generation' <<< "$j" >/dev/null; then
        ready[$i]=$(python3 -c "print(round($(now) - ${t0[$i]}, 1))")
      else left=$((left + 1)); fi
    done
    [ $left -eq 0 ] && break
    [ "$(date +%s)" -lt "$deadline" ] || break
    sleep 2
  done
  line=$(python3 - "$gate" "$TIMEOUT" "${ready[@]/#/x}" <<'PY'
import statistics, sys
gate, timeout, raw = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
vals = [float(v[1:]) for v in raw if v != "x"]
missing = sum(1 for v in raw if v == "x")
shown = " ".join(f"{v:.1f}" for v in sorted(vals)) + (f" + {missing} not Ready in {timeout:.0f} s" if missing else "")
med = statistics.median(vals + [float("inf")] * missing)
print(f"gate={gate}: POST->Ready s: {shown}; median {med:.1f}, max {max(vals) if vals else float('nan'):.1f}")
PY
)
  step "$line"
  summary+=("$line")
  curl -fsS "$API/health/detailed" | jq -c '{domain_type}' || true
  for i in $(seq 0 $((N - 1))); do
    curl -fsS -X DELETE "$API/host/my" -H "Authorization: Bearer ${tokens[$i]}" >/dev/null || true
  done
  gone() { [ "$(su postgres -c "psql -d $DB -tAc 'select count(*) from hostings where not warm_pool'")" = 0 ]; }
  wait_until 300 1 gone || fail "hostings not deleted"
  kill "$HOSTD_PID"; wait "$HOSTD_PID" 2>/dev/null || true; HOSTD_PID=""
done
echo
printf '%s\n' "${summary[@]}"
