#!/usr/bin/env bash
# End-to-end test of the warm pool with real guests (qemu:///system, the
# debian-12 image with its guest agent): with HOSTD_WARM_POOL=1, a hosting is
# served by a claimed pool guest personalised live (its welcome page names
# the user, SSH takes only the user's key, an scp upload is served); a second
# hosting created right after (pool empty) takes the cold path and is Ready
# too; the pool refills. Cleans up after itself even when it fails.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

LABEL=e2e-pool
. scripts/realenv.sh
realenv_up
# Clones are e2e.sh's: here the second hosting must take the cold path.
start_hostd HOSTD_WARM_POOL=1 HOSTD_CLONE_TEMPLATES=false

sql() { su postgres -c "psql -d $DB -tAc \"$1\""; }
pool_ready() {
  [ "$(sql "select count(*) from hostings h join hosting_status s on s.hosting_id = h.id
            where h.warm_pool and h.deletion_requested_at is null and s.phase = 'Ready'
              and s.observed_generation = h.generation")" -ge 1 ]
}
step "waiting for a Ready pool guest"
wait_until "$READY_TIMEOUT" 1 pool_ready || fail "no pool guest became Ready"
POOL_ID=$(sql "select id from hostings where warm_pool and deletion_requested_at is null limit 1")
# A pool guest serves no route: nothing in the routes directory names it.
! grep -rqs "$POOL_ID" "$WORK/routes" || fail "a pool guest has a route"

register() {  # name → token
  curl -fsS -X POST "$API/auth/register" -H 'content-type: application/json' \
    -d "{\"email\":\"$1@example.com\",\"username\":\"$1\",\"password\":\"correct horse\"}" >/dev/null
  curl -fsS -X POST "$API/auth/login" -d "username=$1&password=correct horse" | jq -r .access_token
}
# Ready for this generation (a claim bumps it; phase alone could be stale).
converged() {  # token file → 0 when Ready
  curl -fsS "$API/host/my" -H "Authorization: Bearer $1" > "$2" || return 1
  jq -e '.status.phase == "Ready" and .status.observed_generation == .generation' "$2" >/dev/null
}

step "claim: POST -> Ready from the pool"
TOKEN=$(register pool_user)
ssh-keygen -q -t ed25519 -N '' -f "$WORK/key"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/stranger"
body=$(jq -nc --arg k "$(cat "$WORK/key.pub")" '{ssh_public_keys: [$k]}')
t_post=$(date +%s.%N)
curl -fsS -X POST "$API/host" -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' -d "$body" > "$WORK/host.json"
[ "$(jq -r .id "$WORK/host.json")" = "$POOL_ID" ] || fail "the hosting did not get the pool guest: $(cat "$WORK/host.json")"
USER_ID=$(jq -r .user_id "$WORK/host.json")
# The second tenant asks right away: the pool is empty now.
TOKEN2=$(register cold_user)
curl -fsS -X POST "$API/host" -H "Authorization: Bearer $TOKEN2" > "$WORK/host2.json"
[ "$(jq -r .id "$WORK/host2.json")" != "$POOL_ID" ] || fail "two hostings got one pool guest"
wait_until 120 0.2 converged "$TOKEN" "$WORK/my.json" || { jq . "$WORK/my.json"; fail "claimed hosting not Ready"; }
t_ready=$(date +%s.%N)
python3 -c "print('e2e-pool: warm POST -> Ready in %.1f s' % ($t_ready - $t_post))"
jq -e '.events | map(.reason) | index("Personalised")' "$WORK/my.json" >/dev/null ||
  { jq .events "$WORK/my.json"; fail "not personalised live (no Personalised event)"; }
jq -r '.events[] | select(.reason == "Personalised") | .message' "$WORK/my.json"

SSH_PORT=$(jq -r .status.ssh_port "$WORK/my.json")
SITE="http://127.0.0.1:$NGINX_PORT/$USER_ID/"
ssh_as() {  # key → ssh argv prefix
  echo ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
    -o ConnectTimeout=20 -o LogLevel=ERROR -i "$1" -p "$SSH_PORT" ubuntu@127.0.0.1
}
step "the welcome page names the user"
page=$(curl -fsS "$SITE") || fail "the site does not answer"
grep -q "Welcome, pool_user" <<<"$page" || fail "welcome page does not name the user: $(curl -s "$SITE" | head -c 300)"

step "SSH: the user's key works (hostname personalised), another key does not"
[ "$($(ssh_as "$WORK/key") cat /etc/hostname)" = pool-user ] || fail "hostname not personalised"
[ "$($(ssh_as "$WORK/key") 'stat -c %U /var/www/html /var/www/html/index.html' | sort -u)" = ubuntu ] ||
  fail "/var/www/html not owned by the user"
if $(ssh_as "$WORK/stranger") true 2>/dev/null; then fail "a key that is not the user's was accepted"; fi

step "scp upload is served"
echo "uploaded-$run_id" > "$WORK/upload.txt"
scp -q -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR \
  -i "$WORK/key" -P "$SSH_PORT" "$WORK/upload.txt" ubuntu@127.0.0.1:/var/www/html/upload.txt
[ "$(curl -fsS "${SITE}upload.txt")" = "uploaded-$run_id" ] || fail "uploaded file not served"

step "a key change is applied live through the agent"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/key2"
body=$(jq -nc --arg a "$(cat "$WORK/key.pub")" --arg b "$(cat "$WORK/key2.pub")" '{ssh_public_keys: [$a, $b]}')
curl -fsS -X PATCH "$API/host/my" -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' -d "$body" >/dev/null
wait_until 60 0.5 converged "$TOKEN" "$WORK/my.json" || fail "key change did not converge"
jq -e '.events | map(.reason) | index("SeedApplied")' "$WORK/my.json" >/dev/null || { jq -c ".events[]" "$WORK/my.json"; fail "no SeedApplied event"; }
$(ssh_as "$WORK/key2") true || fail "the added key does not work at once"

step "attack: root in the guest disables the agent; a key change still converges, and applies at the next boot"
$(ssh_as "$WORK/key") 'sudo systemctl mask --now qemu-guest-agent' >/dev/null 2>&1
ssh-keygen -q -t ed25519 -N '' -f "$WORK/key3"
body=$(jq -nc --arg a "$(cat "$WORK/key.pub")" --arg b "$(cat "$WORK/key3.pub")" '{ssh_public_keys: [$a, $b]}')
t_patch=$(date +%s)
curl -fsS -X PATCH "$API/host/my" -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' -d "$body" >/dev/null
wait_until 90 0.5 converged "$TOKEN" "$WORK/my.json" || fail "key change with a dead agent did not converge"
echo "e2e-pool: converged with a dead agent in $(( $(date +%s) - t_patch )) s"
jq -e '.events | map(.reason) | index("SeedApplyFailed")' "$WORK/my.json" >/dev/null || fail "no SeedApplyFailed event"
curl -fsS "${SITE}upload.txt" >/dev/null || fail "the site stopped serving"

step "a reboot from inside applies the seed rewritten in place (key3 in, key2 out) and keeps the personalisation"
$(ssh_as "$WORK/key") 'sudo systemctl reboot' || true
sleep 5
back() { [ "$($(ssh_as "$WORK/key3") cat /etc/hostname 2>/dev/null)" = pool-user ]; }
wait_until "$READY_TIMEOUT" 2 back || fail "after a guest reboot key3 or the hostname is missing"
if $(ssh_as "$WORK/key2") true 2>/dev/null; then fail "a removed key still works after the reboot"; fi
[ "$(curl -fsS "${SITE}upload.txt")" = "uploaded-$run_id" ] || fail "upload not served after the reboot"

step "the second hosting took the cold path and is Ready"
wait_until "$READY_TIMEOUT" 2 converged "$TOKEN2" "$WORK/my2.json" || { jq . "$WORK/my2.json"; fail "cold hosting not Ready"; }
if jq -e '.events | map(.reason) | index("Personalised")' "$WORK/my2.json" >/dev/null; then fail "the cold hosting was claimed"; fi

step "the pool refills"
wait_until "$READY_TIMEOUT" 2 pool_ready || fail "the pool did not refill"
NEW_POOL=$(sql "select id from hostings where warm_pool and deletion_requested_at is null limit 1")
[ "$NEW_POOL" != "$POOL_ID" ] || fail "the refill is the claimed guest"

step "delete both hostings"
for t in "$TOKEN" "$TOKEN2"; do curl -fsS -X DELETE "$API/host/my" -H "Authorization: Bearer $t" >/dev/null; done
gone() { [ "$(curl -s -o /dev/null -w '%{http_code}' "$API/host/my" -H "Authorization: Bearer $1")" = 404 ]; }
wait_until 180 1 gone "$TOKEN" || fail "claimed hosting not deleted"
wait_until 180 1 gone "$TOKEN2" || fail "cold hosting not deleted"
step "passed"
