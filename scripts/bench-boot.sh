#!/usr/bin/env bash
# Where a cold boot's time goes (issue 12): one real guest of the default
# image through hostd, then, inside it over SSH, `systemd-analyze` (kernel,
# initrd, userspace), the critical chain to nginx and sshd, the slowest units,
# and cloud-init's own stage timings; beside them, from the host, POST ->
# Ready. Prints the numbers; asserts nothing. Run alone: it measures time.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
prepare_host
LABEL=bench-boot
. scripts/realenv.sh
realenv_up
start_hostd HOSTD_CLONE_TEMPLATES=false   # a cold boot is what it looks at

curl -fsS -X POST "$API/auth/register" -H 'content-type: application/json' \
  -d '{"email":"boot@example.com","username":"boot","password":"correct horse"}' >/dev/null
TOKEN=$(curl -fsS -X POST "$API/auth/login" -d 'username=boot&password=correct horse' | jq -r .access_token)
ssh-keygen -q -t ed25519 -N '' -f "$WORK/key"
body=$(jq -nc --arg k "$(cat "$WORK/key.pub")" '{ssh_public_keys: [$k]}')
t0=$(date +%s.%N)
curl -fsS -X POST "$API/host" -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' -d "$body" >/dev/null
is_ready() {
  curl -fsS "$API/host/my" -H "Authorization: Bearer $TOKEN" > "$WORK/my.json" || return 1
  [ "$(jq -r .status.phase "$WORK/my.json")" = Ready ]
}
wait_until "$READY_TIMEOUT" 1 is_ready || fail "not Ready"
t1=$(date +%s.%N)
SSH_PORT=$(jq -r .status.ssh_port "$WORK/my.json")
SSH=(ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR -i "$WORK/key" -p "$SSH_PORT" ubuntu@127.0.0.1)
python3 -c "print('POST -> Ready: %.1f s' % ($t1 - $t0))"
# Ready means the site and SSH answer; systemd may still be finishing later jobs.
booted() { "${SSH[@]}" 'systemd-analyze time' >/dev/null 2>&1; }
wait_until 300 3 booted || echo "systemd did not finish booting within 300 s after Ready"
echo "---- systemd-analyze (guest clock) ----"
"${SSH[@]}" 'systemd-analyze time; echo; echo "critical chain of nginx:"; systemd-analyze critical-chain nginx.service; echo; echo "critical chain of ssh:"; systemd-analyze critical-chain ssh.service; echo; echo "slowest units:"; systemd-analyze blame | head -15'
echo "---- cloud-init stages ----"
"${SSH[@]}" 'sudo cloud-init analyze blame 2>/dev/null | head -20; sudo cloud-init analyze show 2>/dev/null | grep -E "Finished stage|Total Time"' || true
echo "---- console (kernel and first userspace lines, guest timestamps) ----"
grep -E 'Run /init|Freeing unused kernel image|systemd\[1\]: systemd [0-9]|Reached target (.*Basic System|.*Cloud-init target|.*Multi-User)' "$STATE_DIR/console/hostd-$(jq -r .id "$WORK/my.json").log" | head -12 || true
curl -fsS -o /dev/null -X DELETE "$API/host/my" -H "Authorization: Bearer $TOKEN"
gone() { [ "$(curl -s -o /dev/null -w '%{http_code}' "$API/host/my" -H "Authorization: Bearer $TOKEN")" = 404 ]; }
wait_until 120 1 gone || fail "hosting not deleted"
