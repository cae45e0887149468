#!/usr/bin/env bash
# Backworks' one entry point.
#   ./run.sh            install Backworks (first run), start the demo backend and serve blueprints/demo.yaml
#                       (ports: DEMO_BACKEND_PORT, default 3001; BACKWORKS_PORT, 8080; BACKWORKS_ADMIN_PORT, 9901)
#   ./run.sh test       install Backworks and the test tools (first run; promtool, prometheus and
#                       chromium from the system's packages when missing) and run the test suite
#   ./run.sh reliability  the reliability suite (fuzzing, chaos, soak; about ten minutes)
#   ./run.sh run FILE   serve another blueprint (any `backworks` subcommand works the same way)
set -euo pipefail
cd "$(dirname "$0")"

VENV="${BACKWORKS_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

# install [test]: Backworks and what it needs to run; with `test`, what the test suite needs too.
install() {
  local extras="" marker="$VENV/.backworks-installed"
  if [ "${1:-}" = test ]; then extras="[test]"; marker="$VENV/.backworks-test-installed"; fi
  if [ ! -x "$VENV/bin/python" ]; then
    echo "run.sh: creating $VENV with $("$PYTHON" --version)" >&2
    "$PYTHON" -m venv "$VENV"
  fi
  # Reinstall when pyproject.toml changed since the last install.
  if [ ! -f "$marker" ] || [ pyproject.toml -nt "$marker" ]; then
    echo "run.sh: installing Backworks${extras:+ and its test tools} into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e ".${extras}"
    "$VENV/bin/python" -m pip check
    touch "$marker"
    [ -z "$extras" ] || touch "$VENV/.backworks-installed"  # the test install holds the plain one
  fi
}

# What listens on 127.0.0.1:PORT, if anything: "PID (command line)", or "an unknown process".
listener_on() {
  local port="$1" pid=""
  (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null || return 1
  if command -v ss >/dev/null 2>&1; then
    pid=$(ss -ltnpH "sport = :${port}" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n 1)
  fi
  if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ]; then
    echo "PID $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" | sed 's/ $//'))"
  else
    echo "an unknown process"
  fi
}

BACKEND_PID=""
GATEWAY_PID=""

# A background job of a non-interactive shell ignores SIGINT, so the demo backend would outlive
# a Ctrl-C sent to the whole process group; and bash runs a trap only once its foreground child
# has exited, so a SIGTERM to this script alone would wait forever. Both processes therefore run
# in the background, this script waits for the gateway, and every way out stops both with SIGTERM.
stop_demo() {
  local pid
  for pid in "$GATEWAY_PID" "$BACKEND_PID"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  for pid in "$GATEWAY_PID" "$BACKEND_PID"; do
    [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
  done
  GATEWAY_PID="" BACKEND_PID=""
}

demo() {
  local backend_port="${DEMO_BACKEND_PORT:-3001}" port="${BACKWORKS_PORT:-8080}" admin_port="${BACKWORKS_ADMIN_PORT:-9901}"
  export DEMO_BACKEND_URL="http://127.0.0.1:${backend_port}" BACKWORKS_PORT="$port" BACKWORKS_ADMIN_PORT="$admin_port"
  local busy
  for wanted in "$backend_port:the demo backend (DEMO_BACKEND_PORT)" "$port:the gateway (BACKWORKS_PORT)"; do
    if busy=$(listener_on "${wanted%%:*}"); then
      echo "run.sh: port ${wanted%%:*}, for ${wanted#*:}, is already in use by ${busy}." >&2
      echo "  a demo left running by an earlier ./run.sh? stop it (kill <PID>), or choose other ports:" >&2
      echo "  DEMO_BACKEND_PORT=3101 BACKWORKS_PORT=8180 ./run.sh" >&2
      exit 1
    fi
  done
  "$VENV/bin/backworks" demo-backend --port "$backend_port" --name demo-backend &
  BACKEND_PID=$!  # global: the EXIT trap runs after this function has returned
  trap stop_demo EXIT
  trap 'stop_demo; exit 130' INT
  trap 'stop_demo; exit 143' TERM
  for _ in $(seq 100); do  # up to 10 s for the backend to listen
    (exec 3<>"/dev/tcp/127.0.0.1/${backend_port}") 2>/dev/null && break
    kill -0 "$BACKEND_PID" 2>/dev/null || { echo "run.sh: the demo backend did not start (see above)" >&2; exit 1; }
    sleep 0.1
  done
  cat >&2 <<MSG

Backworks demo: blueprints/demo.yaml on http://127.0.0.1:${port} (Ctrl-C stops it)
Try:
  curl http://127.0.0.1:${port}/hello
  curl 'http://127.0.0.1:${port}/greet/ada?lang=en'
  curl -X POST http://127.0.0.1:${port}/echo -H 'Content-Type: application/json' -d '{"hello": "world"}'
  curl http://127.0.0.1:${port}/time
  curl http://127.0.0.1:${port}/api/users
  curl http://127.0.0.1:${port}/api/users/2
  curl -i http://127.0.0.1:${port}/nothing-here
The status page (admin listener, loopback only): http://127.0.0.1:${admin_port}/__backworks
  curl http://127.0.0.1:${admin_port}/__backworks/api/status

MSG
  "$VENV/bin/backworks" run blueprints/demo.yaml "$@" &
  GATEWAY_PID=$!
  local status=0
  wait "$GATEWAY_PID" || status=$?
  GATEWAY_PID=""
  return "$status"
}

case "${1:-}" in test|reliability) install test ;; *) install ;; esac
case "${1:-}" in
  test) shift; bash tests/system-tools.sh; exec "$VENV/bin/python" -m pytest "$@" ;;
  reliability) shift; bash tests/system-tools.sh; exec "$VENV/bin/python" -m pytest tests/reliability "$@" ;;
  "") demo ;;
  --*) demo "$@" ;;
  *) exec "$VENV/bin/backworks" "$@" ;;
esac
