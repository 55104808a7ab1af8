# Shared by the scripts: paths and daemon helpers. Source it; do not run it.
HEARTH_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HEARTH_BIN="$HEARTH_REPO/.build/release"
HEARTH_SOCKET="${HEARTH_SOCKET:-/run/hearth/hearthd.sock}"
HEARTH_ROOT="${HEARTH_ROOT:-/var/lib/hearth}"
HEARTH_IMAGE_LAYOUT="$HEARTH_REPO/rootfs/out/python-3.11"
export HEARTH_SOCKET

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

daemon_running() {
  "$HEARTH_BIN/hearth" version --socket "$HEARTH_SOCKET" >/dev/null 2>&1
}

# Starts hearthd in the background unless one answers on $HEARTH_SOCKET.
# Sets STARTED_DAEMON=1 when it started one.
start_daemon() {
  STARTED_DAEMON=0
  if daemon_running; then return 0; fi
  mkdir -p "$(dirname "$HEARTH_SOCKET")" "$HEARTH_ROOT"
  local logfile="${HEARTH_LOG:-$HEARTH_ROOT/hearthd.log}"
  setsid "$HEARTH_BIN/hearthd" --root "$HEARTH_ROOT" --socket "$HEARTH_SOCKET" \
    --init "$HEARTH_BIN/hearth-init" --worker-dir "$HEARTH_REPO/python" >>"$logfile" 2>&1 < /dev/null &
  HEARTHD_PID=$!
  for _ in $(seq 1 100); do
    if daemon_running; then STARTED_DAEMON=1; return 0; fi
    if ! kill -0 "$HEARTHD_PID" 2>/dev/null; then
      echo "hearthd failed to start; its log ($logfile):" >&2
      tail -n 20 "$logfile" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "hearthd did not answer on $HEARTH_SOCKET within 10 s; see $logfile" >&2
  return 1
}

stop_daemon() {
  if [ -n "${HEARTHD_PID:-}" ] && kill -0 "$HEARTHD_PID" 2>/dev/null; then
    kill -TERM "$HEARTHD_PID"
    for _ in $(seq 1 150); do kill -0 "$HEARTHD_PID" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$HEARTHD_PID" 2>/dev/null || true
  fi
}
