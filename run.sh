#!/usr/bin/env bash
# Backworks' one entry point.
#   ./run.sh            install everything (first run), start the demo backend and serve blueprints/demo.yaml
#   ./run.sh test       install everything (first run; promtool, prometheus and chromium from the
#                       system's packages when missing) and run the test suite
#   ./run.sh reliability  the reliability suite (fuzzing, chaos, soak; about ten minutes)
#   ./run.sh run FILE   serve another blueprint (any `backworks` subcommand works the same way)
set -euo pipefail
cd "$(dirname "$0")"

VENV="${BACKWORKS_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

install() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "run.sh: creating $VENV with $("$PYTHON" --version)" >&2
    "$PYTHON" -m venv "$VENV"
  fi
  # Reinstall when pyproject.toml changed since the last install.
  if [ ! -f "$VENV/.backworks-installed" ] || [ pyproject.toml -nt "$VENV/.backworks-installed" ]; then
    echo "run.sh: installing Backworks and its dependencies into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e '.[test]'
    "$VENV/bin/python" -m pip check
    touch "$VENV/.backworks-installed"
  fi
}

BACKEND_PID=""

# A background job of a non-interactive shell ignores SIGINT, so the demo backend would outlive
# a Ctrl-C sent to the whole process group: it is stopped here, with SIGTERM, on every way out.
stop_backend() {
  if [ -n "$BACKEND_PID" ]; then
    kill "$BACKEND_PID" 2>/dev/null || true
    wait "$BACKEND_PID" 2>/dev/null || true
    BACKEND_PID=""
  fi
}

demo() {
  local backend_port="${DEMO_BACKEND_PORT:-3001}" port="${BACKWORKS_PORT:-8080}" admin_port="${BACKWORKS_ADMIN_PORT:-9901}"
  export DEMO_BACKEND_URL="http://127.0.0.1:${backend_port}" BACKWORKS_PORT="$port" BACKWORKS_ADMIN_PORT="$admin_port"
  "$VENV/bin/backworks" demo-backend --port "$backend_port" --name demo-backend &
  BACKEND_PID=$!  # global: the EXIT trap runs after this function has returned
  trap stop_backend EXIT
  trap 'stop_backend; exit 130' INT
  trap 'stop_backend; exit 143' TERM
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
  "$VENV/bin/backworks" run blueprints/demo.yaml "$@"
}

install
case "${1:-}" in
  test) shift; bash tests/system-tools.sh; exec "$VENV/bin/python" -m pytest "$@" ;;
  reliability) shift; bash tests/system-tools.sh; exec "$VENV/bin/python" -m pytest tests/reliability "$@" ;;
  "") demo ;;
  --*) demo "$@" ;;
  *) exec "$VENV/bin/backworks" "$@" ;;
esac
