#!/usr/bin/env bash
# Root-only tests of the C spawn path and hearth-init against a real rootfs.
#
#   sudo tests/c/run.sh
#
# Builds hearth-init (static) and tests/c/spawn_test.c (with
# Sources/CHearth/spawn.c), makes a Debian rootfs with python3 (cached in
# $HEARTH_CTEST_ROOTFS, default /tmp/hearth-ctest-rootfs) and runs the tests.
# Needs gcc, mmdebstrap (first run only), cgroup v1 pids/memory or cgroup v2.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cc=${CC:-gcc}
rootfs=${HEARTH_CTEST_ROOTFS:-/tmp/hearth-ctest-rootfs}

if [ "$(id -u)" != 0 ]; then
    echo "run.sh: must run as root (namespaces, mounts, cgroups)" >&2
    exit 1
fi

tmp=$(mktemp -d /tmp/hearth-ctest.XXXXXX)
cleanup() {
    # Overlay work dirs contain a mode-000 "work" dir; root removes it anyway.
    rm -rf "$tmp"
}
trap cleanup EXIT

mkdir -p "$tmp/init" "$tmp/work"
chmod 755 "$tmp" "$tmp/init" "$tmp/work"

echo "== build"
"$cc" -static -O2 -Wall -Wextra -Werror -o "$tmp/init/hearth-init" "$repo/Sources/hearth-init/hearth-init.c" \
    "$repo/Sources/hearth-init/keeper.c"
"$cc" -std=gnu11 -O2 -g -Wall -Wextra -Werror -I"$repo/Sources/CHearth/include" \
    -o "$tmp/spawn_test" "$here/spawn_test.c" "$repo/Sources/CHearth/spawn.c" \
    "$repo/Sources/CHearth/netns.c" "$repo/Sources/CHearth/sys_shims.c" -pthread

if [ ! -x "$rootfs/usr/bin/python3" ]; then
    echo "== rootfs: mmdebstrap into $rootfs"
    rm -rf "$rootfs.tmp.$$"
    mmdebstrap --variant=essential --include=python3 --skip=output/dev bookworm "$rootfs.tmp.$$"
    mv "$rootfs.tmp.$$" "$rootfs"
fi

echo "== spawn_test"
"$tmp/spawn_test" "$rootfs" "$tmp/init" "$tmp/work"
