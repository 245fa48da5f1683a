#!/usr/bin/env bash
# A private ACME CA for tests (issue 23): Debian's Pebble and its
# pebble-challtestsrv (the DNS server whose A/TXT answers a test sets over
# HTTP), all on 127.0.0.1. Pebble ships no certificate for its own HTTPS
# listener: one is made here under a throwaway CA (`$DIR/ca.pem`, the file
# for HOSTD_ACME_CA_FILE and curl --cacert).
#   scripts/pebble.sh start DIR HTTP_PORT   starts both; prints the variables
#   scripts/pebble.sh stop DIR
# HTTP_PORT is where Pebble's validator fetches HTTP-01 challenges (the host
# nginx's port in tests); every name resolves to 127.0.0.1.
set -euo pipefail
cmd="${1:?start|stop}"; DIR="${2:?directory}"
case "$cmd" in
start)
  HTTP_PORT="${3:?http port}"
  command -v pebble >/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pebble >/dev/null; }
  mkdir -p "$DIR"
  if [ ! -s "$DIR/cert.pem" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
      -subj "/CN=hostd test CA for pebble" -keyout "$DIR/ca.key" -out "$DIR/ca.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
      -keyout "$DIR/key.pem" -out "$DIR/req.pem" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$DIR/san.ext"
    openssl x509 -req -in "$DIR/req.pem" -CA "$DIR/ca.pem" -CAkey "$DIR/ca.key" -CAcreateserial \
      -days 30 -extfile "$DIR/san.ext" -out "$DIR/cert.pem" 2>/dev/null
  fi
  free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  ACME_PORT=$(free_port); MGMT_PORT=$(free_port); DNS_PORT=$(free_port); CTS_MGMT=$(free_port)
  cat > "$DIR/pebble.json" <<JSON
{"pebble": {"listenAddress": "127.0.0.1:$ACME_PORT", "managementListenAddress": "127.0.0.1:$MGMT_PORT",
  "certificate": "$DIR/cert.pem", "privateKey": "$DIR/key.pem",
  "httpPort": $HTTP_PORT, "tlsPort": 5001, "ocspResponderURL": "", "externalAccountBindingRequired": false}}
JSON
  pebble-challtestsrv -defaultIPv4 127.0.0.1 -defaultIPv6 "" -dns01 "127.0.0.1:$DNS_PORT" \
    -http01 "" -https01 "" -tlsalpn01 "" -management "127.0.0.1:$CTS_MGMT" > "$DIR/challtestsrv.log" 2>&1 &
  echo $! > "$DIR/challtestsrv.pid"
  PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 pebble -config "$DIR/pebble.json" \
    -dnsserver "127.0.0.1:$DNS_PORT" > "$DIR/pebble.log" 2>&1 &
  echo $! > "$DIR/pebble.pid"
  for _ in $(seq 100); do
    curl -fsS --cacert "$DIR/ca.pem" "https://127.0.0.1:$ACME_PORT/dir" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fsS --cacert "$DIR/ca.pem" "https://127.0.0.1:$ACME_PORT/dir" >/dev/null ||
    { cat "$DIR/pebble.log" >&2; echo "pebble did not start" >&2; exit 1; }
  echo "HOSTD_ACME_DIRECTORY=https://127.0.0.1:$ACME_PORT/dir"
  echo "HOSTD_ACME_CA_FILE=$DIR/ca.pem"
  echo "PEBBLE_MANAGEMENT=https://127.0.0.1:$MGMT_PORT"
  echo "HOSTD_DNS_RESOLVER=127.0.0.1:$DNS_PORT"
  echo "CHALLTESTSRV=http://127.0.0.1:$CTS_MGMT"
  ;;
stop)
  for p in pebble challtestsrv; do
    [ -s "$DIR/$p.pid" ] && kill "$(cat "$DIR/$p.pid")" 2>/dev/null || true
    rm -f "$DIR/$p.pid"
  done
  ;;
*) echo "usage: $0 start DIR HTTP_PORT | stop DIR" >&2; exit 2 ;;
esac
