#!/usr/bin/env bash
# libvirt driver benchmark: concurrent read calls through one LibvirtDriver
# against the real libvirtd (qemu:///system), at concurrency 1, 8 and 32.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
prepare_host
RUST_LOG="${RUST_LOG:-error}" cargo run --release --locked --example bench_libvirt
