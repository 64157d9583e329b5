#!/usr/bin/env bash
# The local development stack: a real `mlflow server` whose artifacts go to S3, and a moto S3
# server standing in for S3, both on 127.0.0.1 with free ports.
#
#   bash infra/dev_stack.sh start [DIR]   # DIR defaults to runs/dev_stack; prints the env file path
#   source runs/dev_stack/env             # MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL, dummy credentials
#   bash infra/dev_stack.sh status [DIR]  # both endpoints answer? (exit 1 if not)
#   bash infra/dev_stack.sh stop [DIR]    # stops exactly the processes `start` started
#
# State lives in DIR: env (the settings), pids (one process group per server), *.log, mlflow.db.
# The credentials are moto's dummies ("testing"); nothing here reaches the internet.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
BIN=$(dirname "$PY")
BUCKET=${TREASURE_DEV_BUCKET:-treasure-dev}
cmd=${1:-}
DIR=$(mkdir -p "${2:-runs/dev_stack}" && cd "${2:-runs/dev_stack}" && pwd)

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

answers() {  # URL -> 0 when it answers HTTP 200
  curl -fsS -o /dev/null --max-time 5 "$1" 2>/dev/null
}

wait_for() {  # URL NAME LOG: up to DEV_STACK_WAIT_S (180) seconds, then show the log and fail
  local deadline=$((SECONDS + ${DEV_STACK_WAIT_S:-180}))
  while [ "$SECONDS" -lt "$deadline" ]; do
    answers "$1" && return 0
    sleep 0.5
  done
  echo "dev_stack: $2 did not answer at $1; last lines of $3:" >&2
  tail -n 20 "$3" >&2
  return 1
}

start() {
  if [ -f "$DIR/pids" ]; then
    echo "dev_stack: already started in $DIR (stop it first: bash infra/dev_stack.sh stop $DIR)" >&2
    exit 1
  fi
  local s3_port mlflow_port
  s3_port=$(free_port)
  mlflow_port=$(free_port)
  # Dummy credentials: moto accepts any; boto3 and pyarrow refuse to sign without some.
  cat > "$DIR/env" <<EOF
export AWS_ENDPOINT_URL=http://127.0.0.1:$s3_port
export MLFLOW_S3_ENDPOINT_URL=http://127.0.0.1:$s3_port
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export AWS_DEFAULT_REGION=us-east-1
export MLFLOW_TRACKING_URI=http://127.0.0.1:$mlflow_port
export TREASURE_BUCKET=s3://$BUCKET
EOF
  # shellcheck disable=SC1091
  source "$DIR/env"
  : > "$DIR/pids"
  # setsid: each server leads its own process group, so stop can end it and its workers only.
  setsid "$BIN/moto_server" -H 127.0.0.1 -p "$s3_port" > "$DIR/moto.log" 2>&1 &
  echo "moto $!" >> "$DIR/pids"
  wait_for "$AWS_ENDPOINT_URL/moto-api/" "moto S3" "$DIR/moto.log"
  "$PY" -c "import boto3; boto3.client('s3').create_bucket(Bucket='$BUCKET')"
  # The tracking server proxies artifacts to the S3 stand-in, as the cluster's server does to S3.
  setsid "$BIN/mlflow" server --backend-store-uri "sqlite:///$DIR/mlflow.db" \
    --artifacts-destination "s3://$BUCKET/mlflow" --serve-artifacts \
    --host 127.0.0.1 --port "$mlflow_port" --workers 1 > "$DIR/mlflow.log" 2>&1 &
  echo "mlflow $!" >> "$DIR/pids"
  wait_for "$MLFLOW_TRACKING_URI/health" "mlflow server" "$DIR/mlflow.log"
  echo "$DIR/env"
}

group_alive() {  # PGID -> 0 while a live (non-zombie) process is in the group
  ps -eo pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ {found = 1} END {exit !found}'
}

stop() {
  [ -f "$DIR/pids" ] || { echo "dev_stack: nothing started in $DIR"; return 0; }
  while read -r name pid; do
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do group_alive "$pid" || break; sleep 0.25; done
    group_alive "$pid" && kill -KILL -- "-$pid" 2>/dev/null || true
    echo "dev_stack: stopped $name (process group $pid)"
  done < "$DIR/pids"
  rm -f "$DIR/pids"
}

status() {
  # shellcheck disable=SC1091
  source "$DIR/env"
  answers "$AWS_ENDPOINT_URL/moto-api/" && answers "$MLFLOW_TRACKING_URI/health" && echo "dev_stack: up ($DIR/env)"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: bash infra/dev_stack.sh start|status|stop [DIR]" >&2; exit 2 ;;
esac
