#!/usr/bin/env bash
# GPU readiness in one run: the gpu-marked tests (`pytest -m gpu`) and every benchmark on CUDA, their JSON in one
# folder. Under 8 minutes on one GPU (sized on an H200 with 16 cores).
#
#   bash benchmarks/gpu_check.sh          # results in $OUT when set, else gpu_check_out/
#   PYTHON=/path/to/python bash benchmarks/gpu_check.sh
#
# Needs an NVIDIA GPU with its driver and a CUDA build of torch in $PYTHON (default: .venv/bin/python, else python3);
# `pip install torch==2.13.0` from PyPI on Linux is one. Without CUDA it stops at once and says so.
#
# What it writes: environment.json (torch, CUDA, the GPU), pytest_gpu.json (+ .xml, .log), <benchmark>.json (+ .log)
# per benchmark, and summary.json: every step with its status, exit code and seconds. Each step has a time budget
# and all of them share one deadline (BUDGET_S, 420 s: with the CUDA check and one step's 10 s kill grace, well under
# 8 minutes); a step past its budget is interrupted with SIGINT (the benchmarks then stop the servers they started)
# and recorded as failed, and a step the deadline leaves no time for is recorded as not run. A failed step does not
# stop the others; the script exits 1 when any step failed, 2 when CUDA is absent.
#
# Sizes: the benchmarks' defaults are for the 2-core CPU machine of the figures in their docstrings; here each runs
# reduced (fewer cases, records, clients and seconds) so that all of them fit. ecg_read.py and refusals.py measure
# readers only (no model, nothing for a GPU to do): they run on the CPU, as everywhere.
set -uo pipefail

BUDGET_S=${BUDGET_S:-420}

log() { printf 'gpu_check: %s\n' "$*" >&2; }

# the output folder, the steps table and the deadline
init_out() {
    OUT_DIR=${OUT:-gpu_check_out}
    mkdir -p "$OUT_DIR" || { log "cannot create $OUT_DIR"; exit 2; }
    OUT_DIR=$(cd "$OUT_DIR" && pwd)
    STEPS_TSV="$OUT_DIR/steps.tsv"
    : >"$STEPS_TSV"
    FAILED=0
    DEADLINE=$((SECONDS + BUDGET_S))
    log "results go to $OUT_DIR"
}

# record NAME STATUS EXIT_CODE SECONDS COMMAND: one line of the steps table
record() {
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$STEPS_TSV"
    [[ $2 == ok ]] || FAILED=$((FAILED + 1))
    log "$1: $2 (${4}s)"
}

# step NAME BUDGET_S KIND COMMAND...: run one step within its budget and the deadline, stdout to NAME.json (KIND
# json: the output must be one JSON document) or NAME.log (KIND log), stderr to NAME.log; never stops the script
step() {
    local name=$1 budget=$2 kind=$3
    shift 3
    local left=$((DEADLINE - SECONDS)) started=$SECONDS rc status out
    ((budget > left)) && budget=$left
    if ((budget < 2)); then
        record "$name" "not run: no time left of the ${BUDGET_S}s budget" "" 0 "$*"
        return 0
    fi
    log "$name: $* (budget ${budget}s)"
    if [[ $kind == json ]]; then
        out="$OUT_DIR/$name.json"
        timeout --signal=INT --kill-after=10 "$budget" "$@" >"$out" 2>"$OUT_DIR/$name.log"
    else
        out="$OUT_DIR/$name.log"
        timeout --signal=INT --kill-after=10 "$budget" "$@" >"$out" 2>&1
    fi
    rc=$?
    if ((rc == 124 || rc == 137)); then
        status="timed out after ${budget}s"
    elif ((rc != 0)); then
        status="failed (exit $rc; see $name.log)"
    elif [[ $kind == json ]] && ! "$PYTHON" -c 'import json, sys; json.load(open(sys.argv[1], encoding="utf-8"))' "$out" 2>/dev/null; then
        status="failed: its output is not one JSON document (see $name.json)"
    else
        status=ok
    fi
    record "$name" "$status" "$rc" $((SECONDS - started)) "$*"
}

# pytest_summary XML JSON: the JUnit XML of the gpu tests as JSON; fails when no test ran or one was skipped (a
# gpu test skipped on a GPU machine hides a gap)
pytest_summary() {
    "$PYTHON" - "$1" "$2" <<'EOF'
import json
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
suite = root if root.tag == "testsuite" else root.find("testsuite")
tests = []
for case in suite.iter("testcase"):
    outcome, message = "passed", ""
    for kind in ("failure", "error", "skipped"):
        node = case.find(kind)
        if node is not None:
            outcome, message = kind, (node.get("message") or "")[:500]
    tests.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                  "seconds": float(case.get("time") or 0), "message": message})
counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failure", "error", "skipped")}
with open(sys.argv[2], "w", encoding="utf-8") as f:
    json.dump({"counts": counts, "seconds": float(suite.get("time") or 0), "tests": tests}, f, indent=2)
problems = [f"{counts[k]} {k}" for k in ("failure", "error", "skipped") if counts[k]]
if not tests:
    problems.append("no gpu test ran")
if problems:
    sys.exit("gpu tests: " + ", ".join(problems))
EOF
}

# finish: summary.json from the steps table, a table on stderr; exit status 1 when any step failed
finish() {
    "$PYTHON" - "$STEPS_TSV" "$OUT_DIR/summary.json" "$BUDGET_S" <<'EOF' >&2
import json
import sys

steps = []
with open(sys.argv[1], encoding="utf-8") as f:
    for line in f:
        name, status, code, seconds, command = line.rstrip("\n").split("\t")
        steps.append({"step": name, "ok": status == "ok", "status": status,
                      "exit_code": int(code) if code else None, "seconds": int(seconds), "command": command})
failed = [s["step"] for s in steps if not s["ok"]]
summary = {"ok": not failed, "failed": failed, "budget_s": int(sys.argv[3]),
           "seconds": sum(s["seconds"] for s in steps), "steps": steps}
with open(sys.argv[2], "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
for s in steps:
    print(f"  {s['step']:<18} {s['seconds']:>4}s  {s['status']}")
EOF
    if ((FAILED > 0)); then
        log "$FAILED step(s) failed; results in $OUT_DIR"
        return 1
    fi
    log "all steps passed; results in $OUT_DIR"
}

# check_cuda: environment.json, or exit 2 with the reason when torch sees no CUDA device
check_cuda() {
    if ! "$PYTHON" - >"$OUT_DIR/environment.json" <<'EOF'; then
import json
import os
import platform

import torch

if not torch.cuda.is_available():
    raise SystemExit(
        f"CUDA is not available: torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none, a CPU build'}) "
        f"sees no GPU (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}). This check needs an "
        "NVIDIA GPU, its driver and a CUDA build of torch (on Linux, PyPI's: pip install torch==2.13.0)."
    )
props = torch.cuda.get_device_properties(0)
print(json.dumps({
    "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
    "device_count": torch.cuda.device_count(), "device": props.name, "capability": f"{props.major}.{props.minor}",
    "memory_gib": round(props.total_memory / 2**30, 1), "cpu_count": os.cpu_count(),
    "python": platform.python_version(),
}, indent=2))
EOF
        rm -f "$OUT_DIR/environment.json"
        log "stopped: no CUDA device (see above); nothing was run"
        exit 2
    fi
}

main() {
    cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
    if [[ -z ${PYTHON:-} ]]; then
        PYTHON=python3
        [[ -x .venv/bin/python ]] && PYTHON=.venv/bin/python
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the project's packages, installed or not
    init_out
    check_cuda
    local bench=benchmarks

    # the gpu-marked tests of the whole suite (tests/test_gpu.py and every other gpu test)
    step pytest_gpu 150 log "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider --junitxml "$OUT_DIR/pytest_gpu.xml" tests
    if [[ -f "$OUT_DIR/pytest_gpu.xml" ]]; then
        local started=$SECONDS
        if pytest_summary "$OUT_DIR/pytest_gpu.xml" "$OUT_DIR/pytest_gpu.json" 2>>"$OUT_DIR/pytest_gpu.log"; then
            record pytest_gpu_summary ok 0 $((SECONDS - started)) "pytest_summary pytest_gpu.xml"
        else
            record pytest_gpu_summary "failed (see pytest_gpu.json)" 1 $((SECONDS - started)) "pytest_summary pytest_gpu.xml"
        fi
    fi

    # every benchmark: those with a model on CUDA, then the readers
    step brats_infer 70 json "$PYTHON" "$bench/brats_infer.py" --cases 2 --device cuda
    step breakhis_predict 70 json "$PYTHON" "$bench/breakhis_predict.py" --preset full --device cuda --patients 1 \
        --batch-sizes 1 64 --clients 16 --duration 4
    step ecg_predict 50 json "$PYTHON" "$bench/ecg_predict.py" --n 256 --preset full --batch-sizes 1 32 128 \
        --device cuda
    step serve_load 80 json "$PYTHON" "$bench/serve_load.py" --device cuda --duration 2 --clients 32 --records 32
    step startup 50 json "$PYTHON" "$bench/startup.py" --repeats 1 --device cuda
    step ray_predict 60 json "$PYTHON" "$bench/ray_predict.py" --n 256 --device cuda
    step ecg_explain 40 json "$PYTHON" "$bench/ecg_explain.py" --n 128 --device cuda
    step ecg_read 20 json "$PYTHON" "$bench/ecg_read.py" --n 50 --repeats 2
    step refusals 30 json "$PYTHON" "$bench/refusals.py" --repeat 1

    finish
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
