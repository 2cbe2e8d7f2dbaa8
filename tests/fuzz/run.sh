#!/usr/bin/env bash
# Builds the libFuzzer targets (if needed) and runs each one for a bounded time.
#
#   tests/fuzz/run.sh BUILD_DIR SECONDS [TARGET...]
#
# Every target runs SECONDS seconds (-max_total_time) on a copy of its seed corpus in a
# temporary directory, so the repository is never modified. Exit status: 0 if no target found
# anything, 1 if one crashed, leaked, hit UB, broke an invariant or timed out (the input that
# did it is printed; it is kept under BUILD_DIR/artifacts/), 77 (ctest's skip) if clang 16 or
# its libFuzzer runtime is missing, 2 on a usage or build error.
#
# Environment:
#   FUZZ_CXX             the compiler (default clang++-16)
#   FUZZ_JOBS            ninja parallelism (default 2)
#   FUZZ_KEEP_CORPUS=DIR copy each grown corpus to DIR/<target>/ (to review or merge into seeds)
#   TOKGATE_FUZZ_STRICT=1 also check the invariants that known, still open bugs break
#                        (README.md, "Known bugs")
set -uo pipefail

usage() {
  echo "usage: $0 BUILD_DIR SECONDS [TARGET...]" >&2
  exit 2
}
[[ $# -ge 2 ]] || usage
build_dir=$1
seconds=$2
shift 2
[[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 ]] || usage

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
all_targets=(client_hello proxy_protocol host config policy catalog http_request)
if [[ $# -gt 0 ]]; then
  targets=("$@")
else
  targets=("${all_targets[@]}")
fi
for target in "${targets[@]}"; do
  [[ " ${all_targets[*]} " == *" $target "* ]] || { echo "unknown target '$target'" >&2; exit 2; }
done

cxx=${FUZZ_CXX:-clang++-16}
if ! command -v "$cxx" >/dev/null 2>&1; then
  echo "SKIP: $cxx not found (Debian: apt-get install clang-16 libclang-rt-16-dev)" >&2
  exit 77
fi
fuzzer_runtime="$("$cxx" -print-resource-dir)/lib/linux/libclang_rt.fuzzer-x86_64.a"
if [[ ! -f $fuzzer_runtime ]]; then
  echo "SKIP: libFuzzer runtime $fuzzer_runtime not found (Debian: apt-get install libclang-rt-16-dev)" >&2
  exit 77
fi
for tool in cmake ninja; do
  command -v "$tool" >/dev/null 2>&1 || { echo "SKIP: $tool not found" >&2; exit 77; }
done

mkdir -p "$build_dir" || exit 2
build_dir=$(cd "$build_dir" && pwd)
build_started=$SECONDS
if [[ ! -f $build_dir/build.ninja ]]; then
  cmake -S "$here" -B "$build_dir" -G Ninja -DCMAKE_CXX_COMPILER="$cxx" || {
    echo "FAIL: configuring the fuzz build failed" >&2
    exit 2
  }
fi
ninja -C "$build_dir" -j "${FUZZ_JOBS:-2}" || { echo "FAIL: building the fuzz targets failed" >&2; exit 2; }
echo "build: $((SECONDS - build_started)) s"

# UBSan's report with a stack, like ASan's.
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

work=$(mktemp -d "${TMPDIR:-/tmp}/tokgate-fuzz.XXXXXX") || exit 2
trap 'rm -rf "$work"' EXIT

# Reads libFuzzer's final stats and its last status line from a log.
fuzz_stat() { sed -n "s/^stat::$1: *//p" "$2" | tail -n 1; }

failed=()
printf '\n%-15s %10s %8s %14s %6s %6s %6s %5s  %s\n' target execs exec/s corpus cov ft rss_mb time result
for target in "${targets[@]}"; do
  corpus=$work/$target/corpus
  artifacts=$build_dir/artifacts/$target
  log=$work/$target/log
  mkdir -p "$corpus" "$artifacts"
  # Seeds only: crashes-found/ holds reproducers of known bugs, not corpus.
  if [[ -d $here/$target ]]; then
    find "$here/$target" -maxdepth 1 -type f -exec cp -t "$corpus" {} +
  fi
  seeds=$(find "$corpus" -type f | wc -l)
  dict=()
  [[ -f $here/dicts/$target.dict ]] && dict=(-dict="$here/dicts/$target.dict")
  started=$SECONDS
  # The outer timeout only guards against a fuzzer that never stops (startup hang).
  timeout --kill-after=10 $((seconds + 120)) "$build_dir/fuzz_$target" \
    -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=10 -print_final_stats=1 \
    -error_exitcode=1 \
    -artifact_prefix="$artifacts/" "${dict[@]}" "$corpus" >"$log" 2>&1
  status=$?
  elapsed=$((SECONDS - started))
  execs=$(fuzz_stat number_of_executed_units "$log")
  rate=$(fuzz_stat average_exec_per_sec "$log")
  rss=$(fuzz_stat peak_rss_mb "$log")
  last=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  files=$(find "$corpus" -type f | wc -l)
  bytes=$(du -sb "$corpus" | cut -f1)
  result=ok
  if [[ $status -ne 0 ]]; then
    result="FAILED (exit $status)"
    failed+=("$target")
  fi
  printf '%-15s %10s %8s %14s %6s %6s %6s %4ss  %s\n' "$target" "${execs:-?}" "${rate:-?}" \
    "$files/$seeds ($((bytes / 1024))K)" "${cov:-?}" "${ft:-?}" "${rss:-?}" "$elapsed" "$result"
  if [[ $status -ne 0 ]]; then
    # What libFuzzer found: the sanitizer report or broken invariant, and the input it kept.
    grep -E 'ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)|runtime error|invariant violated|SUMMARY' \
      "$log" | head -n 8 | sed 's/^/    /'
    # The stack without libFuzzer's and libc's own frames.
    grep -A 60 -E '^==[0-9]+==ERROR|runtime error|invariant violated' "$log" | grep -E '^ +#[0-9]+ ' |
      grep -vE ' in (fuzzer::|__sanitizer_|__pthread_kill|raise |abort |__assert|__libc_start|_start |main )|libc\.so' |
      head -n 12 | sed 's/^/    /'
    input=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    if [[ -n $input ]]; then
      echo "    crash input: $input"
      echo "    reproduce:   $build_dir/fuzz_$target $input"
    else
      echo "    no input written; full log follows"
      tail -n 40 "$log" | sed 's/^/    /'
    fi
  fi
  if [[ -n ${FUZZ_KEEP_CORPUS:-} ]]; then
    mkdir -p "$FUZZ_KEEP_CORPUS/$target" && cp -r "$corpus/." "$FUZZ_KEEP_CORPUS/$target/"
  fi
done

echo
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz: ${#failed[@]} of ${#targets[@]} targets failed: ${failed[*]}"
  exit 1
fi
echo "fuzz: all ${#targets[@]} targets ran ${seconds}s each without a finding"
