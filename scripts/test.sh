#!/usr/bin/env bash
# Installs and starts what the tests need (Postgres, libvirt, nginx binary,
# genisoimage; Chromium, Selenium and schemathesis for the browser and
# OpenAPI tests), then runs the whole suite: unit tests, API and reconciler
# integration tests against real Postgres, real nginx and libvirt's test
# driver, the lints of the deployment files (with the alert rules'
# promtool tests), a real Prometheus scraping hostd (the rules evaluate, the
# Grafana dashboard's queries return data), the dashboard in a real
# browser, schemathesis against the OpenAPI document, the end-to-end test with a
# real VM (scripts/e2e.sh), two nodes (scripts/e2e-nodes.sh), the cloud-init image's (scripts/e2e-cloudinit.sh),
# the container deployment's under podman (scripts/container-e2e.sh), and the
# crash matrix (tests/crash_matrix.rs, real
# hostd processes and qemu:///system guests from the tiny test image).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

prepare_host
drop_scratch_databases
trap drop_scratch_databases EXIT
export RUST_LOG="${RUST_LOG:-warn}"

log "test tools (Chromium, Selenium, schemathesis, moto, Pebble)"
./scripts/test-tools.sh

log "formatting and lints (cargo fmt --check, cargo clippy -D warnings)"
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings

log "cargo test"
cargo test --locked --all-targets -- --test-threads=4

log "checking deployment files (and the alert rules' promtool tests)"
./scripts/lint-deploy.sh

log "a real Prometheus scrapes hostd: every alert rule evaluates, every dashboard query returns data"
./scripts/prometheus-check.sh

log "dashboard in a real browser (Chromium + Selenium; screenshots in target/artifacts/browser)"
./scripts/browser-test.sh

log "OpenAPI contract fuzzed by schemathesis (at least 1000 requests, no 5xx)"
./scripts/schemathesis.sh

log "end-to-end test with a real guest (qemu:///system)"
./scripts/e2e.sh

log "two nodes end-to-end: placement across two libvirt daemons, a node killed and back"
./scripts/e2e-nodes.sh

log "warm pool end-to-end: a claimed guest personalised live, a cold one beside it"
./scripts/e2e-warm-pool.sh

log "cloud-init path: a real guest on the debian-12-cloudinit image, then a default one (POST -> Ready of both)"
./scripts/e2e-cloudinit.sh

log "container deployment: docker-compose.yml under podman, a real guest through it"
./scripts/container-e2e.sh

log "crash matrix: a real reconciler process aborted at every fault point"
cargo test --locked --test crash_matrix crash_at_every_fault_point -- --ignored --nocapture

log "short chaos soak (scripts/chaos.sh runs longer ones)"
CHAOS_SECS=90 CHAOS_USERS=3 cargo test --locked --test crash_matrix chaos_soak -- --ignored --nocapture

log "tampering with services under a running hostd (alone: restarts Postgres, stops libvirtd)"
cargo test --locked --test tamper_services -- --ignored --test-threads=1
cargo test --locked --test crash_matrix libvirtd_outage -- --ignored --nocapture

log "all tests passed"
