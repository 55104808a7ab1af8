#!/usr/bin/env bash
# The VM half of scripts/vm-test: runs inside the VM that virtme-ng boots
# (the host's filesystem read-only over 9p, pure cgroup v2), sets up a
# delegated cgroup subtree and writable scratch space, runs the root-only
# suites and exits with their status. Not meant to run on a host.
#
# Environment (set by scripts/vm-test): HEARTH_BIN, HEARTH_VM_XCTEST (the
# prebuilt Swift test bundle), HEARTH_VM_CTEST (a directory with spawn_test
# and init/hearth-init), HEARTH_CTEST_ROOTFS, HEARTH_VM_PYTEST (pytest
# arguments: the selection), HEARTH_VM_SUITE_TIMEOUT (seconds per suite),
# HEARTH_VM_FULL (1: also the layout-independent tests tests/vm/skip.txt lists).
set -euo pipefail

# The marker scripts/vm-test waits for: the kernel booted and ran us.
echo "hearth-vm: booted: kernel $(uname -r), $(nproc) CPUs, $(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024)) MiB"

fail() { echo "hearth-vm: $*" >&2; exit 1; }

# Only a pure cgroup v2 layout tests what this VM is for.
[ -f /sys/fs/cgroup/cgroup.controllers ] || fail "no cgroup2 at /sys/fs/cgroup"
if awk '$3 == "cgroup" {found=1} END {exit !found}' /proc/mounts; then
  fail "a cgroup v1 hierarchy is mounted; this VM must be pure cgroup v2"
fi
for c in cpu memory pids; do
  grep -qw "$c" /sys/fs/cgroup/cgroup.controllers || fail "the kernel offers no $c controller"
done

# test_cdi.py uses /dev/fuse and /dev/net/tun as harmless real devices: their
# modules are not loaded at boot here, and devtmpfs shows the nodes once they are.
modprobe -q fuse 2>/dev/null || true
modprobe -q tun 2>/dev/null || true
echo "hearth-vm: devices for the CDI tests: $(ls /dev/fuse /dev/net/tun 2>&1 | tr '\n' ' ')"

# Writable scratch: the root is read-only 9p, and overlayfs cannot use 9p as
# an upper layer. Not over /var/tmp or /tmp: the repository itself may live
# there (CI clones anywhere). conftest.py makes state roots under
# HEARTH_TEST_TMPDIR.
scratch=/run/hearth-vm
mkdir -p "$scratch"
mount -t tmpfs -o mode=1777 hearth-vm "$scratch"
mkdir -p "$scratch/home" "$scratch/work"
export HEARTH_TEST_TMPDIR="$scratch" TMPDIR="$scratch/work" HOME="$scratch/home" PYTHONDONTWRITEBYTECODE=1

# A delegated subtree, as a service manager gives one: controllers enabled
# down to /hearth-vm; this script sits in a leaf (/hearth-vm/runner) so that
# /hearth-vm may enable controllers for its children (no internal processes).
cg=/sys/fs/cgroup/hearth-vm
echo "+cpu +memory +pids" > /sys/fs/cgroup/cgroup.subtree_control
mkdir -p "$cg/runner"
echo "+cpu +memory +pids" > "$cg/cgroup.subtree_control"
echo $$ > "$cg/runner/cgroup.procs"
echo "hearth-vm: cgroup v2 (controllers: $(cat /sys/fs/cgroup/cgroup.controllers)); suites run below ${cg#/sys/fs/cgroup}"

failed=()
timings=()
# run_suite NAME CMD...: runs one suite under the time bound, records its status.
run_suite() {
  local name=$1 t0=$SECONDS rc=0
  shift
  echo
  echo "===== $name"
  timeout --kill-after=10 "${HEARTH_VM_SUITE_TIMEOUT:-1200}" "$@" || rc=$?
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "hearth-vm: $name did not finish within ${HEARTH_VM_SUITE_TIMEOUT:-1200} s (killed)" >&2
  fi
  timings+=("$(printf '%-44s %4d s  exit %d' "$name" $((SECONDS - t0)) "$rc")")
  [ "$rc" = 0 ] || failed+=("$name")
}

# Removes a cgroup tree deepest first; names what could not go.
remove_tree() {
  find "$1" -depth -type d -exec rmdir {} + 2>/dev/null || true
  if [ -d "$1" ]; then
    echo "hearth-vm: cgroups left behind: $(find "$1" -type d | sed 's|^/sys/fs/cgroup||' | tr '\n' ' ')" >&2
    return 1
  fi
}

# 1. The Swift tests that use real cgroups (and load device filters), in a cgroup of their own:
# CgroupManager.prepare() moves every process of the cgroup it runs in into
# a leaf, as hearthd does. HEARTH_CGROUP_V2_TESTS=1 allows that.
mkdir "$cg/swift"
swift_tests=HearthSandboxTests.CgroupLimitsTests,HearthSandboxTests.CgroupDiscoveryTests
swift_tests+=,HearthSandboxTests.CgroupRootTests,HearthSandboxTests.CgroupV2Tests
swift_tests+=,HearthSandboxTests.CgroupV2OnHybridTests,HearthSandboxTests.SeccompTests
swift_tests+=,HearthSandboxTests.DeviceFilterTests
run_suite "swift: HearthSandboxTests (cgroups, seccomp)" \
  sh -c 'echo $$ > "$1/cgroup.procs" && exec env HEARTH_CGROUP_V2_TESTS=1 "$2" "$3"' \
  sh "$cg/swift" "$HEARTH_VM_XCTEST" "$swift_tests"
# What the tests leave: only the `<subtree>-daemon` leaves the test process
# moved itself into (CgroupManager keeps those by design); anything else is
# a replica cgroup left behind.
left=$(find "$cg/swift" -mindepth 1 -type d ! -name '*-daemon' | sed 's|^/sys/fs/cgroup||')
if [ -n "$left" ]; then echo "hearth-vm: the Swift tests left cgroups: $left" >&2; failed+=("swift: cgroups left"); fi
remove_tree "$cg/swift" || failed+=("swift: cgroup cleanup")

# 2. The C spawn path's tests that differ by layout (CLONE_INTO_CGROUP into
# a v2 leaf; the v1 test says it is skipped), built on the host.
if [ -n "${HEARTH_VM_CTEST:-}" ]; then
  mkdir -p "$scratch/ctest-work"
  run_suite "C: spawn_test cgroup_v1 cgroup_v2 full_replica" \
    "$HEARTH_VM_CTEST/spawn_test" "$HEARTH_CTEST_ROOTFS" "$HEARTH_VM_CTEST/init" "$scratch/ctest-work" \
    cgroup_v1 cgroup_v2 full_replica
fi

# 3. The integration suite against real daemons. conftest.py puts each
# daemon into its own cgroup below $HEARTH_TEST_CGROUP_PARENT, as systemd
# does for a service with Delegate=yes, and skips, by name and with the
# reason, what tests/vm/skip.txt lists.
eval "pytest_args=(${HEARTH_VM_PYTEST:-tests/integration})"   # shell-quoted by scripts/vm-test
run_suite "pytest (integration)" \
  env HEARTH_TEST_CGROUP_PARENT="$cg" HEARTH_TEST_SKIP="$PWD/tests/vm/skip.txt" \
  HEARTH_TEST_SKIP_KEEP="$([ "${HEARTH_VM_FULL:-0}" = 1 ] && echo layout-independent || true)" \
  python3 -m pytest -p no:cacheprovider -p no:hypothesispytest -p no:benchmark -rs -v --durations=20 "${pytest_args[@]}"

# Nothing may be left in the delegated subtree but this script's leaf.
echo "$$" > /sys/fs/cgroup/cgroup.procs
left=$(find "$cg" -mindepth 1 -type d ! -path "$cg/runner" | sed 's|^/sys/fs/cgroup||')
if [ -n "$left" ]; then echo "hearth-vm: cgroups left behind: $left" >&2; failed+=("cgroups left"); fi
remove_tree "$cg" || true

echo
echo "===== VM suite summary (cgroup v2, kernel $(uname -r))"
printf '  %s\n' "${timings[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  printf 'hearth-vm: FAILED: %s\n' "${failed[@]}"
  exit 1
fi
echo "hearth-vm: all suites passed"
