#!/usr/bin/env bash
# Runs one libFuzzer harness for a fixed time from its seed corpus:
#   run_fuzzer.sh FUZZER SEED_CORPUS_DIR SECONDS [THIRD_PARTY_CALLER]
# New inputs go to a scratch corpus (the checked-in seeds stay as they are);
# a crash leaves its input as crash-* in the current directory and fails.
#
# THIRD_PARTY_CALLER names the one function of ours that hands the input to a
# library known to crash on crafted input, with that crash contained by the
# product some other way. LibTorch's TorchScript loader is one: it crashes
# inside its unpickler and parser (SEGV, stack overflow, huge allocations),
# and quantd loads each job's model in a child process first
# (worker/model_vetter.h; tests/fuzz/crashers/ and the integration test
# ModelsThatCrashLibTorchsLoaderFailOnlyTheirJob show it). A crash whose
# innermost frame of ours is that function is reported, its input kept, and
# fuzzing resumes; any crash with a frame of ours further in fails the test.
# A report with no frame of ours at all (ASan's fast unwinder stops inside
# LibTorch) is first replayed with full stacks to find one.
#
# One allocation above 1 GiB is reported at the malloc, with its stack
# (-malloc_limit_mb). Left to the RSS limit instead, a 3.5 GiB string the
# unpickler reserves for a crafted length shows only as a live heap with no
# frame of ours, even replayed, and the input could not be told apart from a
# leak of ours.
#
# Longer on demand:
#   run_fuzzer.sh build-sanitize/tests/fuzz/dataset_fuzzer tests/fuzz/corpus/dataset_fuzzer 3600
set -euo pipefail
fuzzer="$1" seeds="$2" seconds="$3" third_party_caller="${4:-}"
work="$(mktemp -d "${TMPDIR:-/tmp}/quantd_fuzz_corpus.XXXXXX")"
trap 'rm -rf "$work" "$work.log" "$work.log.replay"' EXIT
# LibTorch is not instrumented: allocations it makes and frees across the
# boundary, and its global objects, are not ours to report. A failed
# allocation throws std::bad_alloc, as in production, where it is a status.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:alloc_dealloc_mismatch=0:detect_odr_violation=0}:allocator_may_return_null=1"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

# The innermost frame of ours in the first stack trace of a crash report;
# when that frame is a lambda ("in operator()"), the frame that called it too,
# which names the function the lambda is in.
innermost_own_frame() {
  awk '/ERROR: (AddressSanitizer|libFuzzer|UndefinedBehaviorSanitizer)/ { in_report = 1 }
       lambda { print; exit }
       in_report && /^ *#[0-9]+ / && /\/(worker|server|client|tests)\/[^ ]+\.(cc|h):[0-9]+/ {
         print; if ($0 ~ / in operator\(\) /) { lambda = 1; next } exit }' "$1"
}

deadline=$((SECONDS + seconds))
tolerated=0
# LibTorch's loader crashes on a crafted length about twice a minute here:
# the cap grows with the time given, so a long run is not failed by them.
max_tolerated=$((20 + seconds / 10))
while true; do
  left=$((deadline - SECONDS))
  ((left > 0)) || break
  log="$work.log"
  set +e
  "$fuzzer" -max_total_time="$left" -timeout=20 -rss_limit_mb=4096 -malloc_limit_mb=1024 -max_len=65536 \
    -print_final_stats=1 "$work" "$seeds" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  set -e
  ((status == 0)) && break
  frame="$(innermost_own_frame "$log")"
  unit="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)"
  if [[ -z "$frame" && -n "$unit" && -f "$unit" ]]; then
    # ASan records an allocation's stack with its fast unwinder, which stops
    # at the first frame of LibTorch (built without frame pointers): a failed
    # huge allocation there shows no caller. Replay the input with the slow
    # unwinder and a deep stack to see whose frame is innermost.
    echo "run_fuzzer: no frame of ours in the report; replaying $unit with full stacks"
    set +e
    ASAN_OPTIONS="$ASAN_OPTIONS:fast_unwind_on_malloc=0:fast_unwind_on_fatal=0:malloc_context_size=255" \
      "$fuzzer" -timeout=20 -rss_limit_mb=4096 -malloc_limit_mb=1024 "$unit" >"$log.replay" 2>&1
    replay_status=$?
    set -e
    grep -E 'ERROR: |^ *#[0-9]+ ' "$log.replay" | grep -E 'ERROR: |/(worker|server|client|tests)/[^ ]+\.(cc|h):' | head -3 || true
    frame="$(innermost_own_frame "$log.replay")"
    # libFuzzer's RSS limit reached over many inputs (ASan's quarantine and
    # LibTorch's large allocations), with little live heap, and the last
    # input runs fine alone: no leak and no crash of this input. In the
    # product each model loads in a process of its own (the vetter).
    live="$(sed -n 's/^Live Heap Allocations: \([0-9]*\) bytes.*/\1/p' "$log" | head -1)"
    if [[ -n "$third_party_caller" && $replay_status -eq 0 && -n "$live" && $live -lt $((1 << 30)) ]] &&
      grep -q 'ERROR: libFuzzer: out-of-memory' "$log" && ((tolerated < max_tolerated)); then
      tolerated=$((tolerated + 1))
      echo "run_fuzzer: RSS limit reached across inputs with $((live >> 20)) MiB live heap; the input alone" \
        "runs fine; fuzzing resumes"
      continue
    fi
  fi
  if [[ -n "$third_party_caller" && "$frame" == *"$third_party_caller"* && $tolerated -lt $max_tolerated ]]; then
    tolerated=$((tolerated + 1))
    echo "run_fuzzer: crash inside the library called from $third_party_caller (contained by the product;" \
      "input kept as ${unit:-?}); fuzzing resumes"
    continue
  fi
  echo "run_fuzzer: FAILED: a crash with our frame innermost: ${frame:-none found}"
  exit 1
done
echo "run_fuzzer: done; crashes inside the third-party library, contained: $tolerated"
