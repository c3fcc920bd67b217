# Sourced by scripts that run real quantd servers in the background
# (scripts/bench_serving.sh, tests/integration/long_run.sh).
#
# make_work_dir NAME: sets `work` to a new temporary directory; on exit, every
#   pid in `pids` is killed (and waited for) and `work` removed.
# launch_quantd DIR FIXTURES COMMAND...: runs COMMAND (quantd, perhaps behind a
#   prefix such as taskset, with flags of its own) on ephemeral loopback ports
#   over DIR/data, where the fixtures are linked in as `fixtures`, its log in
#   DIR/quantd.log. Waits for it to bind, adds it to `pids` and sets
#   `launched_pid`, `launched_grpc` and `launched_http` (HOST:PORT).

make_work_dir() {
  work="$(mktemp -d -t "$1.XXXXXX")"
  pids=()
  trap _background_quantd_cleanup EXIT
}

_background_quantd_cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

launch_quantd() {
  local dir="$1" fixtures="$2"
  shift 2
  mkdir -p "$dir/data"
  ln -s "$fixtures" "$dir/data/fixtures"
  "$@" --bind_address=127.0.0.1 --grpc_port=0 --metrics_port=0 --data_dir="$dir/data" \
    --port_file="$dir/ports.json" --read_roots="$fixtures" 2>"$dir/quantd.log" &
  launched_pid=$!
  pids+=("$launched_pid")
  for _ in $(seq 1 300); do
    [ -f "$dir/ports.json" ] && break
    sleep 0.1  # waiting for the server to bind
  done
  if [ ! -f "$dir/ports.json" ]; then
    echo "quantd did not start:" >&2
    cat "$dir/quantd.log" >&2
    exit 1
  fi
  launched_grpc="127.0.0.1:$(sed -n 's/.*"grpc_port": *\([0-9]*\).*/\1/p' "$dir/ports.json")"
  launched_http="127.0.0.1:$(sed -n 's/.*"metrics_port": *\([0-9]*\).*/\1/p' "$dir/ports.json")"
}
