#!/usr/bin/env bash
# Installs what is missing, builds everything with warnings as errors, and runs the whole test
# suite (unit tests, then integration tests with real processes on loopback). Ends with ctest's
# summary; the exit status is non-zero if anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build_dir=${TOKGATE_BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTOKGATE_WERROR=ON >/dev/null
cmake --build "$build_dir"
status=0
ctest --test-dir "$build_dir" --output-on-failure --timeout 900 -j "$(nproc)" || status=$?

# The same suite again, built with AddressSanitizer and UndefinedBehaviorSanitizer in a build dir
# of its own (benchmarks left out: they measure, they do not test). Any report fails the test that
# ran the process. TOKGATE_SANITIZED_SUITE=0 skips this part for a quick local run.
if [[ ${TOKGATE_SANITIZED_SUITE:-1} != 0 ]]; then
  asan_dir=${TOKGATE_ASAN_BUILD_DIR:-build-asan}
  cmake -S . -B "$asan_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTOKGATE_WERROR=ON \
    -DTOKGATE_SANITIZE=ON -DTOKGATE_BENCH=OFF >/dev/null
  cmake --build "$asan_dir"
  echo "tokgate: the test suite under ASan+UBSan ($asan_dir)"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=0 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir "$asan_dir" --output-on-failure --timeout 900 -j "$(nproc)" || status=$?
fi
exit "$status"
