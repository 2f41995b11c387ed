#!/usr/bin/env bash
# Mutation testing of the core modules with mutmut 3: each module is mutated in turn, only
# the tests that cover it run against each mutant (mutmut picks, per mutated function, the
# tests that reached it), and the kill rate per module is written to benchmarks/MUTANTS.md.
#
#   scripts/mutants.sh                 every module (about 30 minutes on two cores)
#   scripts/mutants.sh schedules ops   only these modules (rows of the others are kept)
#
# Modules: schedules prompts ops cutouts state store config. Each runs in its own copy of
# the repository under ${MUTANTS_WORK:-/tmp/vqclip-mutants}/<module> (the work tree is never
# touched), with one torch thread and MUTANTS_CHILDREN (default 2) mutants at a time.
# Survivors are listed per module in that folder's survivors.txt; `cd` there and run
# `mutmut show NAME` to see one.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${MUTANTS_WORK:-/tmp/vqclip-mutants}
CHILDREN=${MUTANTS_CHILDREN:-2}
REPORT=benchmarks/MUTANTS.md
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 CUDA_VISIBLE_DEVICES="" PYTHONHASHSEED=0
if [ -x .venv/bin/python ]; then PY=$ROOT/.venv/bin/python; else PY=$(command -v python); fi
"$PY" -c "import mutmut" 2>/dev/null || {
    echo "mutants.sh: mutmut is not installed; pip install -r requirements-test.txt" >&2
    exit 2
}

# module -> the files mutated and the tests run against their mutants (small and fast).
declare -A SOURCE=(
    [schedules]=vqclip/schedules.py
    [prompts]=vqclip/prompts.py
    [ops]=vqclip/ops.py
    [cutouts]=vqclip/cutouts.py
    [state]=vqclip/state.py
    [store]=vqclip/queue/store.py
    # config.py and the modules split from it (checks, prompt syntax, settings, validation)
    [config]="vqclip/config.py vqclip/checks.py vqclip/prompt_syntax.py vqclip/settings.py vqclip/validation.py"
)
declare -A TESTS=(
    [schedules]="tests/test_schedules.py"
    [prompts]="tests/test_prompts.py tests/test_ops.py"
    [ops]="tests/test_ops.py"
    [cutouts]="tests/test_cutouts.py tests/test_ops.py tests/test_speed.py::test_matrix_cutouts_equal_roi_align"
    [state]="tests/test_state.py"
    [store]="tests/test_store.py"
    [config]="tests/test_config.py tests/test_config_messages.py tests/test_config_settings.py tests/test_config_timeline.py tests/test_recipe_shapes.py::test_each_setting_of_the_wrong_kind_is_named tests/test_recipe_shapes.py::test_settings_that_are_no_mapping_are_refused"
)
ORDER=(schedules prompts ops cutouts state store config)

modules=("$@")
[ ${#modules[@]} -eq 0 ] && modules=("${ORDER[@]}")
for m in "${modules[@]}"; do
    [ -n "${SOURCE[$m]:-}" ] || {
        echo "mutants.sh: unknown module '$m'; choose from: ${ORDER[*]}" >&2
        exit 2
    }
done

run_module() {  # $1 = module; prints "killed survived total seconds"
    local m=$1 dir=$WORK/$1 start tests
    start=$(date +%s)
    rm -rf "$dir" && mkdir -p "$dir"
    # A copy of the package, tests, assets and pyproject (no caches, no runs): mutmut writes
    # mutants/ here.
    tar -C "$ROOT" --exclude=__pycache__ -cf - vqclip tests assets pyproject.toml | tar -C "$dir" -xf -
    sources=$(for s in ${SOURCE[$m]}; do printf '    %s\n' "$s"; done)
    tests=$(for t in ${TESTS[$m]}; do [ -f "$ROOT/${t%%::*}" ] && printf '    %s\n' "$t"; done)
    cat >"$dir/setup.cfg" <<EOF
[mutmut]
source_paths = vqclip
only_mutate =
$sources
also_copy =
    assets
pytest_add_cli_args_test_selection =
$tests
pytest_add_cli_args =
    -q
    -p no:randomly
    -p no:cacheprovider
EOF
    (cd "$dir" && "$PY" -m mutmut run --max-children "$CHILDREN" >mutmut.log 2>&1) || {
        echo "mutants.sh: mutmut failed for $m; see $dir/mutmut.log" >&2
        tail -20 "$dir/mutmut.log" >&2
        return 1
    }
    (cd "$dir" && "$PY" -m mutmut results --all true >results.txt 2>&1)
    grep -v ': killed$' "$dir/results.txt" | grep ': ' >"$dir/survivors.txt" || true
    local total killed
    total=$(grep -c ': ' "$dir/results.txt" || true)
    killed=$(grep -c ': killed$' "$dir/results.txt" || true)
    echo "$killed $((total - killed)) $total $(($(date +%s) - start))"
}

machine=$(grep -o -m1 'avx512_bf16\|amx_bf16' /proc/cpuinfo || echo "no native bf16")
cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc reads OMP_NUM_THREADS, set to 1 above
for m in "${modules[@]}"; do
    echo "mutants.sh: $m (${SOURCE[$m]}) against ${TESTS[$m]}" >&2
    read -r killed survived total seconds < <(run_module "$m")
    rate=$("$PY" -c "print(f'{100 * $killed / max($total, 1):.1f}')")
    echo "mutants.sh: $m: $killed of $total killed ($rate %), $survived left, ${seconds}s" >&2
    "$PY" - "$REPORT" "$m" "${SOURCE[$m]}" "${TESTS[$m]}" "$killed" "$total" "$seconds" \
        "$machine" "$cores" <<'PY'
# Rewrite this module's row of the table between the markers; keep every other row and
# all the prose around the table (the explanations of the survivors).
import sys
from datetime import datetime, timezone
from pathlib import Path

report, module, source, tests, killed, total, seconds, machine, cores = sys.argv[1:]
begin, end = "<!-- mutants table begin -->", "<!-- mutants table end -->"
head = ("| module | file mutated | tests run | killed | mutants | kill rate | seconds | date (UTC) "
        "| machine |\n|---|---|---|---|---|---|---|---|---|")
path = Path(report)
text = path.read_text() if path.exists() else f"# Mutation testing\n\n{begin}\n{end}\n"
before, rest = text.split(begin, 1)
table, after = rest.split(end, 1)
rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
rows.pop("module", None)
rate = 100 * int(killed) / max(int(total), 1)
when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
rows[module] = (f"| {module} | {source} | {tests} | {killed} | {total} | {rate:.1f} % | {seconds} "
                f"| {when} | {machine}, {cores} cores |")
order = ["schedules", "prompts", "ops", "cutouts", "state", "store", "config"]
body = "\n".join(rows[m] for m in sorted(rows, key=lambda m: order.index(m) if m in order else 99))
path.write_text(f"{before}{begin}\n{head}\n{body}\n{end}{after}")
PY
done
