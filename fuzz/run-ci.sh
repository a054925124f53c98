#!/usr/bin/env bash
# CI fuzzing: builds every cargo-fuzz target once, then runs each for a bounded time on a copy
# of its committed corpus (fuzz/corpus/<target>/, copied to a temp dir so CI never grows the
# repo). A crash, a leak or a timeout fails the run after every target has had its turn; the
# reproducer stays in fuzz/artifacts/<target>/ and is printed here as a hex dump.
#
#   FUZZ_SECONDS=60    seconds per target (default 60)
#   FUZZ_TARGETS="a b" only these targets (default: every target `cargo fuzz list` shows)
#
# Longer runs, reproducing and minimising a crash: fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${FUZZ_SECONDS:-60}
case $seconds in
  '' | *[!0-9]*) echo "FUZZ_SECONDS must be a whole number of seconds, not '$seconds'" >&2; exit 2 ;;
esac

if ! command -v cargo-fuzz >/dev/null; then
  echo "cargo-fuzz not found: installing it"
  cargo install cargo-fuzz --locked
fi

# libFuzzer and the sanitizers need unstable flags: nightly if rustup has it, else the stable
# toolchain with RUSTC_BOOTSTRAP (CI machines have one toolchain and cannot fetch another).
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi
"${fuzz[@]}" --version

if [ -n "${FUZZ_TARGETS:-}" ]; then
  read -r -a targets <<<"$FUZZ_TARGETS"
else
  mapfile -t targets < <("${fuzz[@]}" list)
fi
[ ${#targets[@]} -gt 0 ] || { echo "no fuzz targets found" >&2; exit 1; }

build_start=$SECONDS
# One build for all targets (release, AddressSanitizer, debug assertions on).
"${fuzz[@]}" build
echo "built ${#targets[@]} targets in $((SECONDS - build_start))s"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
summary=()
for target in "${targets[@]}"; do
  corpus="$work/corpus-$target"
  mkdir -p "$corpus" "artifacts/$target"
  if [ -d "corpus/$target" ]; then
    cp -R "corpus/$target/." "$corpus/"
  fi
  seeds=$(find "$corpus" -type f | wc -l)
  args=(
    "-max_total_time=$seconds"
    -print_final_stats=1
    # An input that takes this long is a hang: reported and failed like a crash.
    -timeout=10
  )
  if [ -f "dicts/$target.dict" ]; then
    args+=("-dict=dicts/$target.dict")
  fi
  marker="$work/start-$target"
  touch "$marker"
  log="$work/$target.log"
  echo
  echo "--- fuzz $target: ${seconds}s from $seeds seed inputs"
  status=0
  "${fuzz[@]}" run "$target" "$corpus" -- "${args[@]}" >"$log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
  grown=$(find "$corpus" -type f | wc -l)
  if [ "$status" -eq 0 ]; then
    # The last lines name the coverage reached; the whole log would drown CI's output.
    grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n1 || true
    summary+=("$target: ok, ${runs:-?} runs, ${rate:-?} exec/s, corpus $seeds -> $grown")
    continue
  fi
  failed+=("$target")
  summary+=("$target: FAILED (exit $status), ${runs:-?} runs, ${rate:-?} exec/s")
  # What libFuzzer said about the failure: the sanitizer report or the panic, and the stack.
  grep -n -E 'panicked|ERROR: |SUMMARY: |==[0-9]+==|Test unit written|Running: |^ +#[0-9]+ ' "$log" | head -n 80 || true
  echo "(last lines of the log)"
  tail -n 40 "$log"
  found=0
  while IFS= read -r artifact; do
    found=1
    echo
    echo "reproducer: fuzz/$artifact ($(wc -c <"$artifact") bytes)"
    od -A x -t x1z -v "$artifact" | head -n 64
    if [ "$(wc -c <"$artifact")" -le 16384 ]; then
      # The whole input as one line of hex: `xxd -r -p` (or Python's bytes.fromhex) rebuilds it.
      echo "hex: $(od -An -v -t x1 "$artifact" | tr -d ' \n')"
    fi
    echo "reproduce: cd fuzz && ${fuzz[*]} run $target $artifact"
  done < <(find "artifacts/$target" -type f -newer "$marker" | sort)
  if [ "$found" -eq 0 ]; then
    echo "no reproducer was written to fuzz/artifacts/$target/ (see the log above)"
  fi
done

echo
echo "=== fuzz summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing failed: ${failed[*]}" >&2
  exit 1
fi
