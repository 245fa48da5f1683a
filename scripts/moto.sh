#!/usr/bin/env bash
# A private S3 store for tests (issue 25): moto's server (moto[server] from
# PyPI, in memory, installed into the test venv by scripts/test-tools.sh)
# on 127.0.0.1, with one bucket.
#   scripts/moto.sh start DIR BUCKET   starts it; prints the HOSTD_BACKUP_S3_* variables
#   scripts/moto.sh objects DIR BUCKET OUT   downloads every object into OUT/
#   scripts/moto.sh stop DIR
set -euo pipefail
cd "$(dirname "$0")/.."
cmd="${1:?start|objects|stop}"; DIR="${2:?directory}"
TEST_VENV="${HOSTD_TEST_VENV:-/var/cache/hostd-test/venv}"
[ -x "$TEST_VENV/bin/moto_server" ] || ./scripts/test-tools.sh >&2
py() { "$TEST_VENV/bin/python" - "$@"; }
case "$cmd" in
start)
  BUCKET="${3:?bucket}"
  mkdir -p "$DIR"
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$TEST_VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" > "$DIR/moto.log" 2>&1 &
  echo $! > "$DIR/moto.pid"; echo "$PORT" > "$DIR/port"
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
  py "$PORT" "$BUCKET" <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
s3.create_bucket(Bucket=sys.argv[2])
PY
  echo "HOSTD_BACKUP_S3_URL=http://127.0.0.1:$PORT/$BUCKET/e2e"
  echo "HOSTD_BACKUP_S3_ACCESS_KEY=testing"
  echo "HOSTD_BACKUP_S3_SECRET_KEY=testing"
  ;;
objects)
  BUCKET="${3:?bucket}"; OUT="${4:?output directory}"
  mkdir -p "$OUT"
  py "$(cat "$DIR/port")" "$BUCKET" "$OUT" <<'PY'
import os, sys, boto3
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=sys.argv[2]):
    for o in page.get("Contents", []):
        dest = os.path.join(sys.argv[3], o["Key"].replace("/", "_"))
        s3.download_file(sys.argv[2], o["Key"], dest)
        print(o["Key"], o["Size"])
PY
  ;;
stop)
  [ -f "$DIR/moto.pid" ] && kill "$(cat "$DIR/moto.pid")" 2>/dev/null || true
  ;;
esac
