#!/usr/bin/env bash
# Everything that needs a GPU, in one run, for a session that is lent a CUDA machine (CI and the
# project's own machines have none): the device tests, then the GPU benchmarks and profiles. Eight
# logs, the most the device tool brings back from $OUT.
#
#   bash benchmarks/device_checks.sh              # on the GPU machine, from the repository root
#   DEVICE=cpu QUICK=1 bash benchmarks/device_checks.sh   # the same plumbing, small, on a CPU
#   STEPS="device_tests efm_speed" bash benchmarks/device_checks.sh    # only these steps
#   EFM_PREVIOUS=FILE ...    # efm_speed also times fields/empirical.py as held in FILE (--previous)
#   SUITE_SECONDS=240 ...    # then the whole suite, -rf, for at most that long (its log: suite.txt)
#
# Needs a python3 with torch (CUDA build), numpy, scipy, pandas, pyarrow, matplotlib, tqdm and
# pytest; the package is taken from src/ (nothing installed). Logs go to $OUT, else ./device_out.
# Copy the figures into BENCHMARKS.md with the device named.
set -uo pipefail
device=${DEVICE:-cuda}
quick=${QUICK:+--quick}
out=${OUT:-device_out}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
step() {    # step NAME COMMAND...: run it, keep its output in $out/NAME.txt, remember a failure
    local name=$1
    shift
    [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" $name "* ]] && return 0
    echo "== $name: $*"
    "$@" 2>&1 | tee "$out/$name.txt" || status=1
}
step environment python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__,
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')"
step device_tests python3 -m pytest -q -p no:cacheprovider -rs tests/test_devices.py
previous=${EFM_PREVIOUS:+--previous $EFM_PREVIOUS}
step efm_speed python3 benchmarks/efm_speed.py --device "$device" $quick $previous
step nn_speed python3 benchmarks/nn_speed.py --device "$device" $quick
step kpe_overhead python3 benchmarks/kpe_overhead.py --device "$device" $quick
step reference_speed python3 benchmarks/reference_speed.py --device "$device" $quick
[ -z "$quick" ] && step efm_large python3 benchmarks/efm_speed.py --device "$device" --batch 2048 --atoms 50000 --repeats 3 \
    $previous
step device_profile python3 benchmarks/device_profile.py --device "$device"
if [ -n "${SUITE_SECONDS:-}" ]; then
    echo "== suite: the whole test suite, -rf, for at most $SUITE_SECONDS s"
    timeout "$SUITE_SECONDS" python3 -m pytest -q -p no:cacheprovider -rf --maxfail=50 \
        $(python3 -c "import xdist" 2>/dev/null && echo "-n 12") > "$out/suite.txt" 2>&1 || status=1
    tail -30 "$out/suite.txt"
fi
echo "== done (status $status); logs in $out/"
exit $status
