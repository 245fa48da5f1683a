#!/usr/bin/env bash
# End-to-end test of the cloud-init path: the `debian-12-cloudinit` image
# (Debian's cloud-init, no hostd-boot, no guest agent; built offline by
# `scripts/build-image.sh debian-12-cloudinit`) configured from the same
# NoCloud seed hostd writes for every hosting. A real guest on
# qemu:///system: the welcome page names the user, key-only SSH, the guest
# firewall, the hostname, and a key change applied at the next boot. A
# default-image hosting is created right after it, so the two POST -> Ready
# times are measured in one run on one machine. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

LABEL=e2e-cloudinit
. scripts/realenv.sh
t_build=$(date +%s)
HOSTD_STATE_DIR="$STATE_DIR" ./scripts/build-image.sh debian-12-cloudinit
step "debian-12-cloudinit image ready ($(( $(date +%s) - t_build )) s, built or up to date)"
realenv_up
# No template for clones: its build would only compete with these two boots.
start_hostd HOSTD_CLONE_TEMPLATES=false

register() {  # $1 username; prints a token
  curl -fsS -X POST "$API/auth/register" -H 'content-type: application/json' \
    -d "{\"email\":\"$1@example.com\",\"username\":\"$1\",\"password\":\"correct horse\"}" > "$WORK/$1.json"
  curl -fsS -X POST "$API/auth/login" -d "username=$1&password=correct horse" | jq -r .access_token
}
step "two tenants: one on debian-12-cloudinit, then one on the default image"
TOKEN=$(register ci_user)
USER_ID=$(jq -r .id "$WORK/ci_user.json")
REF_TOKEN=$(register ref_user)
ssh-keygen -q -t ed25519 -N '' -f "$WORK/key1"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/key2"
phase_of() {  # $1 token, $2 file: the hosting's phase (and its JSON in $2)
  curl -fsS "$API/host/my" -H "Authorization: Bearer $1" > "$2" && jq -r .status.phase "$2"
}
create_and_time() {  # $1 token, $2 JSON body, $3 status file: prints POST -> Ready seconds
  local t0 code
  t0=$(date +%s.%N)
  code=$(curl -sS -o "$3" -w '%{http_code}' -X POST "$API/host" -H "Authorization: Bearer $1" \
    -H 'content-type: application/json' -d "$2")
  [ "$code" = 202 ] || fail "POST /host $2 answered $code: $(cat "$3")"
  ready() { [ "$(phase_of "$1" "$2")" = Ready ]; }
  wait_until "$READY_TIMEOUT" 1 ready "$1" "$3" || fail "not Ready after ${READY_TIMEOUT}s: $(jq -c .status "$3")"
  python3 -c "print('%.1f' % ($(date +%s.%N) - $t0))"
}
# One after the other, each alone (the boot gate would serialise them anyway).
step "waiting for the cloud-init guest to be Ready (TCG)"
body=$(jq -nc --arg k "$(cat "$WORK/key1.pub")" '{image: "debian-12-cloudinit", ssh_public_keys: [$k]}')
secs_ci=$(create_and_time "$TOKEN" "$body" "$WORK/my.json")
step "waiting for the default guest to be Ready (TCG)"
secs_ref=$(create_and_time "$REF_TOKEN" '{}' "$WORK/ref.json")
echo "e2e-cloudinit: POST -> Ready, one after the other on this machine: debian-12-cloudinit $secs_ci s, debian-12 $secs_ref s"
SSH_PORT=$(jq -r .status.ssh_port "$WORK/my.json")
SITE="http://127.0.0.1:$NGINX_PORT/$USER_ID/"
ssh_with() {  # $1 key file, then the remote command
  local key=$1; shift
  ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o ConnectTimeout=20 \
    -o LogLevel=ERROR -o IdentitiesOnly=yes -i "$key" -p "$SSH_PORT" ubuntu@127.0.0.1 "$@"
}

step "the welcome page names the user"
page=$(curl -fsS "$SITE") || fail "the site does not answer"
grep -q "Welcome, ci_user" <<<"$page" || fail "welcome page missing the username"

step "configured by cloud-init (not hostd-boot): hostname, firewall, sshd"
out=$(ssh_with "$WORK/key1" 'hostname; test -e /usr/local/sbin/hostd-boot && echo hostd-boot-present;
  cloud-init status; sudo nft list ruleset; sudo sshd -T | grep -i "^passwordauthentication"') ||
  fail "SSH with the key failed"
[ "$(head -1 <<<"$out")" = "ci-user" ] || fail "unexpected hostname: $(head -1 <<<"$out")"
grep -q hostd-boot-present <<<"$out" && fail "the cloud-init image carries hostd-boot"
grep -q "status: done" <<<"$out" || fail "cloud-init did not finish: $out"
grep -q "table inet hostd" <<<"$out" || fail "firewall not loaded: $out"
grep -q "tcp dport { 22, 80 } accept" <<<"$out" || fail "firewall does not allow exactly 22 and 80: $out"
grep -qx "passwordauthentication no" <<<"$out" || fail "sshd allows passwords: $out"

step "password login is refused"
no_password_login "$SSH_PORT"

step "a key change applies at the next boot (no guest agent on this image)"
body=$(jq -nc --arg k "$(cat "$WORK/key2.pub")" '{ssh_public_keys: [$k]}')
gen=$(curl -fsS -X PATCH "$API/host/my" -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' -d "$body" | jq -r .generation)
converged() {  # $1 phase wanted: the spec observed and the phase reached
  [ "$(phase_of "$TOKEN" "$WORK/my.json")" = "$1" ] && [ "$(jq -r .status.observed_generation "$WORK/my.json")" -ge "$gen" ]
}
wait_until 60 2 converged Ready || fail "key change not observed: $(jq -c .status "$WORK/my.json")"
jq -r '.events[].message' "$WORK/my.json" | grep -q "next boot" ||
  fail "no event says the key applies at the next boot: $(jq -c '[.events[].message]' "$WORK/my.json")"
ssh_with "$WORK/key1" true || fail "the old key stopped working before a reboot (the event said the next boot)"
gen=$(curl -fsS -X PATCH "$API/host/my" -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' -d '{"running":false}' | jq -r .generation)
wait_until 180 2 converged Stopped || fail "not Stopped: $(jq -c .status "$WORK/my.json")"
t_restart=$(date +%s.%N)
gen=$(curl -fsS -X PATCH "$API/host/my" -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' -d '{"running":true}' | jq -r .generation)
wait_until "$READY_TIMEOUT" 2 converged Ready || fail "not Ready after the restart: $(jq -c .status "$WORK/my.json")"
python3 -c "print('e2e-cloudinit: start of a stopped debian-12-cloudinit guest -> Ready %.1f s' % ($(date +%s.%N) - $t_restart))"
wait_until 60 3 ssh_with "$WORK/key2" true || fail "the new key does not log in after the reboot"
ssh_with "$WORK/key1" true 2>/dev/null && fail "the removed key still logs in after the reboot"
[ "$(ssh_with "$WORK/key2" hostname)" = "ci-user" ] || fail "hostname changed across the reboot"
grep -q "Welcome, ci_user" <<<"$(curl -fsS "$SITE")" || fail "the welcome page changed across the reboot"

step "DELETE both"
for t in "$TOKEN" "$REF_TOKEN"; do curl -fsS -o /dev/null -X DELETE "$API/host/my" -H "Authorization: Bearer $t"; done
hosting_gone() { [ "$(curl -s -o /dev/null -w '%{http_code}' "$API/host/my" -H "Authorization: Bearer $1")" = 404 ]; }
wait_until 120 2 hosting_gone "$TOKEN" || fail "hosting not removed"
wait_until 120 2 hosting_gone "$REF_TOKEN" || fail "reference hosting not removed"
step "cloud-init end-to-end test passed"
