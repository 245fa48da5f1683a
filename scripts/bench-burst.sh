#!/usr/bin/env bash
# Burst benchmark with real guests (issues 30 and 26), in one run: N users
# (default 10) create a default-size hosting at the same moment, a warm pool
# of BURST_POOL Ready guests (default 2; 0 for none), the CPU overcommit
# raised so that all fit; each POST -> Ready (site through nginx and SSH) is
# printed, with the median and the maximum, and where the host's CPU time
# went until the last was Ready (scripts/cpu-account.py), once per mode:
#   cold    templates for clones off: the pool, then cold boots (the boot
#           gate at BURST_GATE, default: its default for this host);
#   clones  a template for clones built first: the pool, then clones;
#   single  no pool, a template: one create at a time, 3 times.
#   gate=K  (issue 30's comparison) templates off, boot gate at K.
# A hosting that is not Ready within BURST_TIMEOUT (default 900 s) is
# reported as such, not waited for.
# Usage: scripts/bench-burst.sh [N] [modes...]   default: `10 cold clones single`
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
prepare_host
LABEL=bench-burst
. scripts/realenv.sh
N="${1:-10}"; shift || true
MODES=("$@"); [ ${#MODES[@]} -gt 0 ] || MODES=(cold clones single)
TIMEOUT="${BURST_TIMEOUT:-900}"
POOL="${BURST_POOL:-2}"
realenv_up
now() { date +%s.%N; }

summary=()
R=0
tpl_ready() { compgen -G "$STATE_DIR/templates/$INSTANCE/*/template.json" >/dev/null; }
for mode in "${MODES[@]}"; do
  R=$((R + 1))
  gate="${BURST_GATE:-default}"; [ "${mode#gate=}" = "$mode" ] || gate="${mode#gate=}"
  env_mode=(); [ "$gate" = default ] || env_mode=("HOSTD_BOOT_CONCURRENCY=$gate")
  pool=$POOL; n=$N; rounds=1
  case "$mode" in
    clones) env_mode+=(HOSTD_CLONE_TEMPLATES=true) ;;
    single) env_mode+=(HOSTD_CLONE_TEMPLATES=true); pool=0; n=1; rounds=3 ;;
    *) env_mode+=(HOSTD_CLONE_TEMPLATES=false) ;;
  esac
  start_hostd HOSTD_REGISTER_PER_HOUR=1000 HOSTD_WARM_POOL="$pool" HOSTD_CPU_OVERCOMMIT=16 HOSTD_HOST_RESERVED_MIB=512 "${env_mode[@]}"
  pool_ready() {
    [ "$(su postgres -c "psql -d $DB -tAc \"select count(*) from hostings h join hosting_status s on s.hosting_id = h.id
        where h.warm_pool and h.deletion_requested_at is null and s.phase = 'Ready' and s.observed_generation = h.generation\"")" -eq "$pool" ]
  }
  if [ "$mode" = clones ] || [ "$mode" = single ]; then
    wait_until 900 2 tpl_ready || fail "no template for clones after 900 s"
  fi
  wait_until 900 2 pool_ready || fail "the warm pool of $pool did not become Ready"
  for round in $(seq 1 $rounds); do
  step "$mode: $n concurrent create(s), warm pool $pool, boot gate $gate"
  tokens=(); t0=(); ready=()
  for i in $(seq 1 "$n"); do
    u="burst${R}r${round}x$i"
    curl -fsS -X POST "$API/auth/register" -H 'content-type: application/json' \
      -d "{\"email\":\"$u@example.com\",\"username\":\"$u\",\"password\":\"correct horse\"}" >/dev/null
    tokens+=("$(curl -fsS -X POST "$API/auth/login" -d "username=$u&password=correct horse" | jq -r .access_token)")
    ready+=("")
  done
  posts=()
  python3 scripts/cpu-account.py snap "$WORK/cpu.json"
  burst_t0=$(now)
  for i in $(seq 0 $((n - 1))); do
    t0+=("$(now)")
    curl -fsS -X POST "$API/host" -H "Authorization: Bearer ${tokens[$i]}" >/dev/null &
    posts+=($!)
  done
  # Only the POSTs: a bare `wait` would wait for hostd too.
  wait "${posts[@]}"
  deadline=$(( $(date +%s) + TIMEOUT ))
  while :; do
    left=0
    for i in $(seq 0 $((n - 1))); do
      [ -n "${ready[$i]}" ] && continue
      j=$(curl -fsS "$API/host/my" -H "Authorization: Bearer ${tokens[$i]}")
      if jq -e '.status.phase == "Ready" and .status.observed_generation == .generation' <<< "$j" >/dev/null; then
        ready[$i]=$(python3 -c "print(round($(now) - ${t0[$i]}, 1))")
      else left=$((left + 1)); fi
    done
    [ $left -eq 0 ] && break
    [ "$(date +%s)" -lt "$deadline" ] || break
    sleep 0.2
  done
  cpu=$(python3 scripts/cpu-account.py diff "$WORK/cpu.json" "$(python3 -c "print($(now) - $burst_t0)")")
  line=$(python3 - "$mode (pool $pool)" "$TIMEOUT" "${ready[@]/#/x}" <<'PY'
import statistics, sys
mode, timeout, raw = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
vals = [float(v[1:]) for v in raw if v != "x"]
missing = sum(1 for v in raw if v == "x")
shown = " ".join(f"{v:.1f}" for v in sorted(vals)) + (f" + {missing} not Ready in {timeout:.0f} s" if missing else "")
med = statistics.median(vals + [float("inf")] * missing)
print(f"{mode}: POST->Ready s: {shown}; median {med:.1f}, max {max(vals) if vals else float('nan'):.1f}")
PY
)
  how=$(for i in $(seq 0 $((n - 1))); do curl -fsS "$API/host/my" -H "Authorization: Bearer ${tokens[$i]}" |
    jq -r 'if any(.events[]; .message | startswith("warm-pool guest personalised")) then "pool"
      elif any(.events[]; .reason == "Cloned") then "clone" else "cold" end'; done | sort | uniq -c | tr -s ' \n' ' ')
  ms=$(for i in $(seq 0 $((n - 1))); do curl -fsS "$API/host/my" -H "Authorization: Bearer ${tokens[$i]}" |
    jq -r '[.events[] | select(.reason == "Cloned" or (.reason == "Personalised" and (.message | startswith("clone"))))
            | .message | capture("in (?<ms>[0-9]+) ms").ms] | reverse | join("/")'; done | grep . | tr '\n' ' ')
  steps=$(for i in $(seq 0 $((n - 1))); do curl -fsS "$API/host/my" -H "Authorization: Bearer ${tokens[$i]}" |
    jq -r '.events[] | select(.reason == "Personalised" and (.message | startswith("clone"))) | .message
            | capture("in the guest, ms: (?<s>[^;]*); the agent and the shell.s start: (?<a>[0-9]+) ms")
            | "[\(.s), agent+shell \(.a)]"'; done | tr '\n' ' ')
  line="$line; started as: $how${ms:+; clone start/personalisation ms: $ms}${steps:+; personalisation steps ms: $steps}; $cpu"
  step "$line"
  summary+=("$line")
  for i in $(seq 0 $((n - 1))); do
    curl -fsS -X DELETE "$API/host/my" -H "Authorization: Bearer ${tokens[$i]}" >/dev/null || true
  done
  gone() { [ "$(su postgres -c "psql -d $DB -tAc 'select count(*) from hostings where not warm_pool'")" = 0 ]; }
  wait_until 300 1 gone || fail "hostings not deleted"
  done
  kill "$HOSTD_PID"; wait "$HOSTD_PID" 2>/dev/null || true; HOSTD_PID=""
done
echo
printf '%s\n' "${summary[@]}"
