#!/usr/bin/env bash
# Benchmarks (commands, not tests): builds the release binaries, then runs
# `bench SUITE` (suites: nbd, groups, security, federation, csi, dr). Needs fio, qemu-nbd, nbd tools and etcd, as
# scripts/test.sh installs them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p tether-cli -p satellite-csi -p multicluster-tests --bins
exec ./target/release/bench "${@:-nbd}"
