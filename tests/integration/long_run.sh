#!/usr/bin/env bash
# One quantd running many jobs, evaluations and inference for a while, as a
# server does in production (the oneDNN failure fixed on 2026-12-03 showed only
# after ~45 jobs in one process, in quantd-accuracy-bench). Two submitters run ROUNDS rounds of six
# presets each, every job published as the next version of resnet8 and
# evaluated, while a third client keeps sending ModelInfer requests for the
# latest version. Presets: fbgemm, onednn, qnnpack, x86, best, and fbgemm with
# accuracy-aware tuning. Checks:
#   - every job SUCCEEDED, every evaluation too, no inference request failed;
#   - a preset gives the same artifact in every round (jobs are deterministic,
#     whatever ran before them in the process and beside them);
#   - the same artifact evaluates to the same top-1 every time;
#   - quantd is still serving at the end and exits 0 on SIGTERM.
#   long_run.sh SOURCE_DIR BUILD_DIR FIXTURES_DIR [ROUNDS]   (default 4: 49 jobs)
set -euo pipefail
build_dir="$(cd "$2" && pwd)"
fixtures="$(cd "$3" && pwd)"
rounds="${4:-4}"
source "$1/scripts/lib/background_quantd.sh"
make_work_dir quantd-long-run
fail() {
  echo "long_run: $1" >&2
  exit 1
}

launch_quantd "$work" "$fixtures" "$build_dir/server/quantd"
quantd_pid="$launched_pid"
export QUANTD_SERVER="$launched_grpc"
quantctl="$build_dir/client/quantctl"
json() { /usr/bin/python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }

# submit NAME PRESET: one job, published; appends "NAME PRESET ARTIFACT VERSION TOP1" to results.
# PRESET "tuned" is fbgemm with a short accuracy-aware search (a trial cap, no
# time budget to cut it short under load, so that it is deterministic too).
submit() {
  local name="$1" preset="$2" job artifact version top1 flags=(--preset="$2")
  [ "$preset" = tuned ] && flags=(--preset=fbgemm --tuning=fixtures/cifar10/val_batch.bin --against_fp32
    --tolerance=0.1 --max_trials=6 --time_budget_seconds=1000)
  "$quantctl" --json submit --model=fixtures/models/resnet8_fp32.torchscript.pt \
    --calib=fixtures/cifar10/calib_batch.bin "${flags[@]}" --fusion=auto --model_name=resnet8 --wait \
    >"$work/$name.log" 2>&1 || fail "job $name ($preset) failed: $(tail -5 "$work/$name.log")"
  job="$(grep -o '"job-[0-9a-f]*"' "$work/$name.log" | head -1 | tr -d '"')"
  [ -n "$job" ] || fail "job $name: no job id in $(head -c 300 "$work/$name.log")"
  "$quantctl" --json job "$job" >"$work/$name.job.json"
  [ "$(json 'd["state"]' <"$work/$name.job.json")" = "JOB_STATE_SUCCEEDED" ] || fail "job $name did not succeed"
  artifact="$(json 'd["result"]["artifactSha256"]' <"$work/$name.job.json")"
  version="$("$quantctl" --json models resnet8 |
    json "[v['version'] for v in d['versions'] if v['jobId'] == '$job'][0]")"
  "$quantctl" --timeout_seconds=300 --json eval "resnet8:$version" --data=fixtures/cifar10/test_batch.bin \
    --max_samples=2000 --skip_fp32 >"$work/$name.eval.json" 2>"$work/$name.eval.err" ||
    fail "evaluation of $name failed: $(tail -5 "$work/$name.eval.err")"
  top1="$(json 'd["report"]["int8"]["top1Correct"]' <"$work/$name.eval.json")"
  echo "$name $preset $artifact $version $top1" >>"$work/results"
}

presets=(fbgemm onednn qnnpack x86 best tuned)
submit first fbgemm  # a published version for the inference client
(
  while kill -0 "$quantd_pid" 2>/dev/null; do
    if "$quantctl" infer resnet8 --data="$fixtures/cifar10/test_batch.bin" --first=$((RANDOM % 9000)) \
      --count=$((1 + RANDOM % 32)) >/dev/null 2>>"$work/infer.err"; then
      echo ok >>"$work/infer.ok"
    else
      kill -0 "$quantd_pid" 2>/dev/null && echo failed >>"$work/infer.failed"
    fi
  done
) &
pids+=($!)
submitter() {
  local who="$1" round preset
  for round in $(seq 1 "$rounds"); do
    for preset in "${presets[@]}"; do submit "$who-$round-$preset" "$preset"; done
  done
}
submitter a &
a=$!
submitter b &
b=$!
wait "$a" || fail "submitter a stopped"
wait "$b" || fail "submitter b stopped"

kill -0 "$quantd_pid" || fail "quantd died: $(tail -20 "$work/quantd.log")"
"$quantctl" health >/dev/null || fail "quantd is not serving after the run"
if [ -f "$work/infer.failed" ]; then
  fail "$(wc -l <"$work/infer.failed") inference requests failed: $(sort "$work/infer.err" | uniq -c | head -5)"
fi
inferences="$(cat "$work/infer.ok" 2>/dev/null | wc -l)"
[ "$inferences" -ge 20 ] || fail "only $inferences inference requests were made alongside the jobs"
cat "$work/results"
/usr/bin/python3 - "$work/results" "$((2 * rounds * ${#presets[@]} + 1))" <<'PY'
import collections, sys
rows = [line.split() for line in open(sys.argv[1])]
if len(rows) != int(sys.argv[2]):
    sys.exit(f"long_run: {len(rows)} jobs finished, want {sys.argv[2]}")
artifacts, top1 = collections.defaultdict(set), collections.defaultdict(set)
for name, preset, artifact, version, correct in rows:
    artifacts[preset].add(artifact)
    top1[artifact].add(correct)
bad = {p: a for p, a in artifacts.items() if len(a) != 1}
if bad:
    sys.exit(f"long_run: presets that gave different artifacts in one process: {bad}")
bad = {a[:12]: t for a, t in top1.items() if len(t) != 1}
if bad:
    sys.exit(f"long_run: artifacts whose evaluations differ: {bad}")
print(f"long_run: {len(rows)} jobs, {len(artifacts)} presets, each one artifact; evaluations agree")
PY
kill -TERM "$quantd_pid"
status=0
wait "$quantd_pid" || status=$?
[ "$status" = 0 ] || fail "quantd exited $status on SIGTERM: $(tail -20 "$work/quantd.log")"
echo "long_run: $(wc -l <"$work/results") jobs and evaluations, $inferences inference requests alongside; quantd exited 0"
