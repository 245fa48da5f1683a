#!/usr/bin/env bash
# A real Prometheus (Debian's) scrapes a running hostd (examples/ui_harness:
# API and reconciler on a fresh database, real nginx, libvirt's test driver,
# stand-in guests), with deploy/prometheus/hostd-rules.yml loaded: every
# rule must evaluate without error, and every query of every panel of
# deploy/grafana/hostd.json must return data. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
command -v prometheus >/dev/null || die "prometheus is missing: run scripts/test-tools.sh"
OUT=target/artifacts/prometheus
rm -rf "$OUT"; mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/hostd-prom.XXXXXX)
cargo build --locked -q --example ui_harness

coproc HARNESS { exec target/debug/examples/ui_harness 2> "$OUT/hostd.log"; }
PROM_PID=""
cleanup() {
  [ -z "$PROM_PID" ] || kill "$PROM_PID" 2>/dev/null || true
  exec {HARNESS[1]}>&- 2>/dev/null || true
  wait "$HARNESS_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
read -r -t 120 info <&"${HARNESS[0]}" || die "the harness did not start (see $OUT/hostd.log)"
URL=$(jq -r .url <<<"$info")
ADMIN=$(curl -fsS -X POST "$URL/api/v1/auth/login" \
  -d "username=$(jq -r .admin_user <<<"$info")&password=$(jq -r .admin_password <<<"$info")" | jq -r .access_token)
# Something to reconcile: a tenant's hosting (Ready on a stand-in guest).
curl -fsS -X POST "$URL/api/v1/auth/register" -H 'content-type: application/json' \
  -d '{"email":"prom@example.com","username":"prom","password":"correct horse"}' >/dev/null
TOKEN=$(curl -fsS -X POST "$URL/api/v1/auth/login" -d "username=prom&password=correct horse" | jq -r .access_token)
curl -fsS -X POST "$URL/api/v1/host" -H "Authorization: Bearer $TOKEN" >/dev/null

printf '%s' "$ADMIN" > "$WORK/token"
cp deploy/prometheus/hostd-rules.yml "$WORK/"
PROM_PORT=$(free_port)
cat > "$WORK/prometheus.yml" <<CONF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [hostd-rules.yml]
scrape_configs:
  - job_name: hostd
    metrics_path: /metrics
    authorization: {type: Bearer, credentials_file: $WORK/token}
    static_configs:
      - targets: ["${URL#http://}"]
CONF
promtool check config "$WORK/prometheus.yml" >/dev/null
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/data" \
  --web.listen-address="127.0.0.1:$PROM_PORT" > "$OUT/prometheus.log" 2>&1 &
PROM_PID=$!
PROM="http://127.0.0.1:$PROM_PORT"
query() { curl -fsS --get "$PROM/api/v1/query" --data-urlencode "query=$1"; }
scraped() { [ "$(query 'up{job="hostd"}' 2>/dev/null | jq -r '.data.result[0].value[1] // empty')" = 1 ]; }
wait_until 60 0.5 scraped || { tail -n 20 "$OUT/prometheus.log"; die "Prometheus does not scrape hostd"; }
# Rates need two samples in their window; the hosting needs a resync or two.
sleep 8
log "Prometheus at $PROM scrapes hostd at $URL"

# Every rule evaluates (a rule with a bad expression has health "err").
rules=$(curl -fsS "$PROM/api/v1/rules")
n_rules=$(jq '[.data.groups[].rules[]] | length' <<<"$rules")
bad=$(jq -r '.data.groups[].rules[] | select(.health != "ok") | "\(.name): \(.lastError)"' <<<"$rules")
[ "$n_rules" -ge 10 ] || die "only $n_rules rules loaded"
[ -z "$bad" ] || die "rules that do not evaluate: $bad"
firing=$(jq -r '[.data.groups[].rules[] | select(.state == "firing") | .name] | join(", ")' <<<"$rules")
echo "prometheus-check: $n_rules alert rules evaluate; firing now: ${firing:-none}"

# Every panel's every query returns data.
empty=0; total=0
while IFS=$'\t' read -r title expr; do
  total=$((total + 1))
  n=$(query "$expr" | jq '.data.result | length')
  if [ "$n" -gt 0 ]; then
    printf '  %-55s %s series\n' "$title" "$n"
  else
    printf '  %-55s EMPTY: %s\n' "$title" "$expr"; empty=$((empty + 1))
  fi
done < <(jq -r '.panels[] | .title as $t | .targets[] | [$t, .expr] | @tsv' deploy/grafana/hostd.json)
[ "$total" -gt 0 ] || die "no panel queries found"
[ "$empty" = 0 ] || die "$empty of $total dashboard queries return no data"
echo "prometheus-check: all $total queries of $(jq '.panels | length' deploy/grafana/hostd.json) panels return data"
