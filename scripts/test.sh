#!/usr/bin/env bash
# Runs every test Tether has. Installs the Debian packages the tests need
# (etcd-server, fio, fuse3, libnbd-bin, python3-libnbd, qemu-utils, rsync,
# e2fsprogs, xfsprogs, iptables, iproute2)
# when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v fio >/dev/null || need+=(fio)
command -v nbdcopy >/dev/null || need+=(libnbd-bin)
command -v nbdinfo >/dev/null || need+=(libnbd-bin)
command -v qemu-io >/dev/null || need+=(qemu-utils)
command -v rsync >/dev/null || need+=(rsync)
# fusermount3, for the power-loss test's FUSE filesystem (lossyfs).
command -v fusermount3 >/dev/null || need+=(fuse3)
# mkfs.ext4, resize2fs, mkfs.xfs and xfs_growfs, for the CSI node tests.
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v mkfs.xfs >/dev/null || need+=(xfsprogs)
# iptables, for the DR tests' cut of the link between the datacentres.
command -v iptables >/dev/null || need+=(iptables)
# ss, for the fault tests' cut of connections a process has open already.
command -v ss >/dev/null || need+=(iproute2)
# libnbd's Python module, for test clients that issue raw aio requests.
/usr/bin/python3 -c 'import nbd' 2>/dev/null || need+=(python3-libnbd)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! fio --enghelp 2>/dev/null | grep -qw nbd; then
  echo "this fio has no nbd ioengine (Debian's fio has one)" >&2
  exit 1
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The end-to-end tests drive the real `tether` binary; `cargo test` alone
# does not build it.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast
# The fault suite's report (cargo test shows a passing test's output only on failure).
if [ -f target/fault-report.txt ]; then
  cat target/fault-report.txt
fi
# Every cargo fuzz target, 20 s each from the committed seeds (crashes fail).
./scripts/fuzz.sh
# Both Helm charts: lint, render, validate against the Kubernetes schemas.
./scripts/charts.sh
