#!/usr/bin/env bash
# GPU verification: one run on a rented H100/H200 box that has torch, lightning and torchmetrics but not
# jsonargparse, wandb or this project, and no internet. Run from the repository root:
#
#   bash benchmarks/gpu_check.sh                        # results in ./gpu_out (OUT=... to change)
#   TINY=1 OUT=/tmp/gpu_out bash benchmarks/gpu_check.sh  # tiny sizes: a few minutes on a CPU, to test this script
#   BENCH=0 FITS=best bash benchmarks/gpu_check.sh  # only that fit (steps 0 and 4-5)
#   BENCH=0 PARALLEL=1 T_FIT_BEST=360 VALIDATE=0 PREDICT=0 FIT_ARGS="--checkpoint.save_top_k -1" \
#       FITS="best best+model.dropout=0.3" bash benchmarks/gpu_check.sh  # both fits at once, every checkpoint kept
#
# Needs .whl/ (the missing Python packages, see benchmarks/README.md) and data/ci.txt beside it.
# benchmarks/gpu/bench/vs_seed.py and benchmarks/gpu/reference/seed_babygpt.py are copies of ../shared (bench/ and
# reference/) for the device run, which does not get shared/; a shared/ in the tree, if there is one, wins.
#
# Steps (each under `timeout`; a failed step does not stop the next ones; all output goes to $OUT; SKIP names
# steps to leave out):
#   0 gpu_tests: the tests that need a CUDA device (pytest is in the device image)
#   1 vs_seed: the project against the tutorial's model    2 bench_train.py, eager and compiled, with a profile
#   3 bench_generate.py --compile: eager, CUDA-graph and compiled decode, and profiles of one batch-1 decode
#     (graph and compiled);
#     profile_fit.py: the Lightning loop, compiled, and compiled in mode reduce-overhead (step 2 too)
#   4 babygpt fit (with FIT_ARGS), then validate (VALIDATE=1) of its best and its last checkpoint, for each of FITS
#     (validation every VAL_EVERY steps; PARALLEL=1 trains them all at once, for losses, not for speed: five took
#     ~290 s each on an H200, so raise T_FIT_BEST): base = configs/base.yaml, best = configs/best.yaml (any name:
#     configs/NAME.yaml). NAME+KEY=VALUE+... adds --KEY VALUE options: FITS="best best+model.dropout=0.3"
#     compares best.yaml with a variant of it (whose files are named fit_best_model_dropout_0_3 and so on)
#   5 babygpt predict from each best checkpoint (PREDICT=1)
# then $OUT/summary.json gathers every figure. The whole run stays under TOTAL_S seconds.
set -u

OUT=${OUT:-./gpu_out}
TINY=${TINY:-0}
PY=${PY:-python3}
WORK=${WORK:-/tmp/gpu_work}  # checkpoints and wandb files: too big to bring back in $OUT
SITE=${SITE:-/tmp/site}
TOTAL_S=${TOTAL_S:-560}       # the device allows 600 s per command; later steps are skipped past this
T_WHEELS=${T_WHEELS:-60}
T_VS_SEED=${T_VS_SEED:-90}
T_TRAIN_BENCH=${T_TRAIN_BENCH:-150}  # compiles the training step
T_GENERATE=${T_GENERATE:-120}        # compiles the decode step, then profiles one decode
T_PROFILE=${T_PROFILE:-90}  # compiles the model
T_FIT_BASE=${T_FIT_BASE:-160}        # an H200 took 130 s for 4814 steps
T_FIT_BEST=${T_FIT_BEST:-170}        # best.yaml compiles the model first
T_VALIDATE=${T_VALIDATE:-45}
T_PREDICT=${T_PREDICT:-40}
# The seed recipe validates every 50 steps over 100 batches: 10,000 extra forward passes, more than the
# training itself costs on a GPU. The val loss at step 5000 is the same figure at any interval.
VAL_EVERY=${VAL_EVERY:-500}
BENCH=${BENCH:-1}            # 0: skip steps 1-3 (the speed benchmarks)
FITS=${FITS:-base best}      # the training runs of step 4, in order
FIT_ARGS=${FIT_ARGS:-}       # more options for every fit
PARALLEL=${PARALLEL:-0}      # 1: the fits at once (each in its own process; the GPU has room for several)
VALIDATE=${VALIDATE:-1}      # 0: no validate step (the fit's own validations are in the checkpoint names)
PREDICT=${PREDICT:-1}        # 0: no predict step
SKIP=${SKIP:-}               # step names to leave out

mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd)
START=$(date +%s)
rm -f "$OUT"/{*.log,best_*.txt,checkpoints_*.txt,predict_*.jsonl,train*.json,train_profile*.txt,profile_fit*.txt,generate.json,generate_profile.txt,summary.json}  # no stale figures
: >"$OUT/steps.tsv"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_SILENT=true WANDB_DIR="$WORK" TOKENIZERS_PARALLELISM=false

log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/run.log"; }

# skipped NAME REASON: log that step NAME is left out, and record it so in steps.tsv.
skipped() {
    log "$1: skipped ($2)"
    printf '%s\tskipped\t0\n' "$1" >>"$OUT/steps.tsv"
}

# skipping NAME: whether SKIP names this step (then it is recorded as skipped).
skipping() { [[ " $SKIP " == *" $1 "* ]] && skipped "$1" SKIP; }

# step NAME LIMIT CMD...: run CMD under timeout (never past TOTAL_S), log to $OUT/NAME.log, record rc and seconds.
step() {
    local name=$1 limit=$2
    shift 2
    skipping "$name" && return 0
    local left=$((TOTAL_S - ($(date +%s) - START)))
    if ((left < 10)); then
        skipped "$name" "the run's $TOTAL_S s are spent"
        return 1
    fi
    ((limit > left)) && limit=$left
    log "$name (limit ${limit}s): $*"
    local t0 rc
    t0=$(date +%s.%N)
    timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    local secs
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    ((rc == 124 || rc == 137)) && log "$name: TIMED OUT after ${limit}s"
    log "$name: rc=$rc in ${secs}s (last lines below)"
    tail -n 5 "$OUT/$name.log" | sed 's/^/    /' | tee -a "$OUT/run.log"
    printf '%s\t%s\t%s\n' "$name" "$rc" "$secs" >>"$OUT/steps.tsv"
    return "$rc"
}

# --- the wheels: only what is missing, into $SITE; this checkout's babygpt_pl/ beats the project's wheel ---
install_wheels() {
    if $PY -c "import jsonargparse, wandb, rich, docstring_parser, typeshed_client" 2>/dev/null && [ -z "${FORCE_WHEELS:-}" ]; then
        echo "jsonargparse, wandb and rich are already importable: not installing .whl/"
        return 0
    fi
    local wheels
    wheels=$(ls .whl/*.whl | grep -v '/babygpt-' || true)
    [ -d babygpt_pl ] || wheels=$(ls .whl/*.whl)
    # shellcheck disable=SC2086
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" $wheels
}
export -f install_wheels
export PY SITE PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
step wheels "$T_WHEELS" bash -c install_wheels
$PY -c "import jsonargparse, wandb, babygpt_pl; print('imports ok')" 2>&1 | tee -a "$OUT/run.log"

log "nvidia-smi"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.txt"
else
    echo "nvidia-smi not found: no NVIDIA driver here" | tee "$OUT/nvidia-smi.txt"
fi

if $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    DEVICE=cuda PRECISION=bf16-mixed TRAIN_COMPILE=both
elif [ "$TINY" = 1 ]; then
    DEVICE=cpu PRECISION=32 TRAIN_COMPILE=eager  # inductor on 2 CPU cores would take minutes
    log "no CUDA: TINY=1 runs everything on the CPU"
else
    log "no CUDA device: this script is for a GPU box (TINY=1 runs it on a CPU)"
    exit 1
fi

# --- sizes ---
GEN_SIZES=()
FIT_SIZES=(--trainer.precision "$PRECISION" --trainer.val_check_interval "$VAL_EVERY")
TRAIN_CONFIG=configs/base.yaml
if [ "$TINY" = 1 ]; then
    cat >"$WORK/tiny.yaml" <<'EOF'
model: {block_size: 32, n_embed: 32, n_head: 2, n_layer: 2, dropout: 0.0}
data: {batch_size: 8}
EOF
    TRAIN_CONFIG=$WORK/tiny.yaml
    GEN_SIZES=(--block-size 64 --n-embed 32 --n-head 2 --n-layer 2 --new-tokens 20 --batch 1 4 --prompt-len 16
        --no-cache-tokens 10 --rounds 1)
    FIT_SIZES+=(--model.block_size 32 --model.n_embed 32 --model.n_head 2 --model.n_layer 2 --data.batch_size 8
        --trainer.max_steps 20 --trainer.val_check_interval 10 --data.val_batches 2)
    [ "$DEVICE" = cpu ] && FIT_SIZES+=(--model.compile false)  # inductor on a CPU: minutes, or no C++ toolchain
fi

CORPUS=data/ci.txt
[ -f "$CORPUS" ] || { [ -f shared/data/ci.txt ] && CORPUS=shared/data/ci.txt; }

# --- 0. the tests that only run where there is a CUDA device ---
if [ "$DEVICE" = cuda ]; then
    step gpu_tests 90 $PY -m pytest -q -p no:cacheprovider tests/test_generation.py -k "gpu or cuda"
fi

if [ "$BENCH" = 1 ]; then
# --- 1. the project against the tutorial's model ---
VS_SEED=benchmarks/gpu/bench/vs_seed.py
[ -f shared/bench/vs_seed.py ] && [ -f shared/reference/seed_babygpt.py ] && VS_SEED=shared/bench/vs_seed.py
if [ "$TINY" = 1 ]; then
    # vs_seed.py fixes the seed shape; TINY loads it as a module, shrinks SEED_SHAPE and runs its quality check.
    step vs_seed "$T_VS_SEED" $PY -c '
import importlib.util, sys
path = sys.argv[1]
sys.argv = sys.argv[1:]
spec = importlib.util.spec_from_file_location("vs_seed", path)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
mod.SEED_SHAPE = dict(block_size=256, n_embed=32, n_head=2, n_layer=2)  # 256: its 200 tokens stay in the window
mod.main()' "$VS_SEED" --device "$DEVICE" --what quality-check
else
    step vs_seed "$T_VS_SEED" $PY "$VS_SEED" --device "$DEVICE" --what all
fi

# --- 2. training-step speed, eager and compiled ---
TRAIN_STEPS=()
[ "$TINY" = 1 ] && TRAIN_STEPS=(--steps 3 --warmup 1)
step train_bench "$T_TRAIN_BENCH" $PY benchmarks/bench_train.py --config "$TRAIN_CONFIG" --device "$DEVICE" \
    --compile "$TRAIN_COMPILE" --precision "$PRECISION" "${TRAIN_STEPS[@]}" --out "$OUT/train.json" \
    --profile "$OUT/train_profile.txt"
if [ "$TRAIN_COMPILE" = both ]; then  # the same step under CUDA graphs (torch.compile mode reduce-overhead)
    step train_bench_ro "$T_TRAIN_BENCH" $PY benchmarks/bench_train.py --config "$TRAIN_CONFIG" --device "$DEVICE" \
        --compile --compile-mode reduce-overhead --precision "$PRECISION" "${TRAIN_STEPS[@]}" \
        --out "$OUT/train_ro.json" --profile "$OUT/train_profile_ro.txt"
fi

# --- 3. generation speed: eager, CUDA graph, compiled CUDA graph ---
step generate_bench "$T_GENERATE" $PY benchmarks/bench_generate.py --device "$DEVICE" --compile "${GEN_SIZES[@]}" \
    --out "$OUT/generate.json" --profile "$OUT/generate_profile.txt"
PROFILE_SIZES=("${FIT_SIZES[@]}")
[ "$TINY" = 1 ] && PROFILE_SIZES+=(--start 3 --steps 2)
# The Lightning loop: on a GPU compiled, and compiled under CUDA graphs; TINY on a CPU runs it eager.
PROFILE_MODES=(eager)
[ "$TRAIN_COMPILE" = both ] && PROFILE_MODES=(default reduce-overhead)
for mode in "${PROFILE_MODES[@]}"; do
    name=profile_fit
    compile=(--model.compile false)
    [ "$mode" != eager ] && name=profile_fit_$mode compile=(--model.compile true --model.compile_mode "$mode")
    step "$name" "$T_PROFILE" $PY benchmarks/profile_fit.py --config "$TRAIN_CONFIG" --data.path "$CORPUS" \
        "${PROFILE_SIZES[@]}" "${compile[@]}" --checkpoint.dirpath "$WORK/ckpt-profile" \
        --trainer.enable_progress_bar false --trainer.logger.init_args.save_dir "$WORK" --out "$OUT/$name.txt"
done
fi

# --- 4. the real training runs, then validate on each best checkpoint ---
# fit_tag ENTRY: the entry's name for step and file names (the device brings back plain names only).
fit_tag() { printf '%s' "$1" | tr -c 'A-Za-z0-9_' '_'; }
# fit_setup ENTRY: sets config, tag, ckpt_dir, limit and common (the options fit and validate share) for a FITS
# entry; fails, with the reason in $missing, where the config or the corpus is missing.
fit_setup() {
    local entry=$1 name kv overrides extra=()
    name=${entry%%+*}
    IFS=+ read -ra overrides <<<"$entry"
    for kv in "${overrides[@]:1}"; do extra+=("--${kv%%=*}" "${kv#*=}"); done
    tag=$(fit_tag "$entry")
    config=configs/$name.yaml
    ckpt_dir=$WORK/ckpt-$tag
    limit=$T_FIT_BASE
    [ "$name" != base ] && limit=$T_FIT_BEST
    # shellcheck disable=SC2206
    common=(--config "$config" --data.path "$CORPUS" "${FIT_SIZES[@]}" "${extra[@]}" $FIT_ARGS
        --trainer.enable_progress_bar false)
    missing=
    [ -f "$config" ] || missing="$config does not exist"
    [ -f "$CORPUS" ] || missing="no data/ci.txt: carry it with the run"
    [ -z "$missing" ]
}

run_fit() {
    if ! fit_setup "$1"; then
        skipped "fit_$tag" "$missing"
        return 0
    fi
    skipping "fit_$tag" && return 0  # keeping its earlier checkpoints
    rm -rf "$ckpt_dir"
    step "fit_$tag" "$limit" $PY -m babygpt_pl.cli fit "${common[@]}" --checkpoint.dirpath "$ckpt_dir" \
        --trainer.logger.init_args.offline true --trainer.logger.init_args.save_dir "$WORK"
}

TAGS=()
for entry in $FITS; do
    TAGS+=("$(fit_tag "$entry")")
    if [ "$PARALLEL" = 1 ]; then
        run_fit "$entry" &
    else
        run_fit "$entry"
    fi
done
wait

for entry in $FITS; do
    fit_setup "$entry" || continue
    ls "$ckpt_dir" >"$OUT/checkpoints_$tag.txt" 2>/dev/null  # with save_top_k -1: the val loss at each validation
    # The lowest val loss in the names (with save_top_k -1 every validation's checkpoint is a best-*.ckpt).
    best=$(ls "$ckpt_dir"/best-*.ckpt 2>/dev/null |
        awk -F'val_loss=' '{v = $2; sub(/\.ckpt$/, "", v); print v "\t" $0}' | sort -g | head -n 1 | cut -f 2)
    [ -n "$best" ] || best=$(ls "$ckpt_dir"/last.ckpt 2>/dev/null)
    if [ -z "$best" ]; then
        log "validate_$tag: skipped (fit wrote no checkpoint)"
        continue
    fi
    echo "$best" >"$OUT/best_$tag.txt"
    [ "$VALIDATE" = 1 ] || continue
    step "validate_$tag" "$T_VALIDATE" $PY -m babygpt_pl.cli validate "${common[@]}" --ckpt_path "$best" \
        --trainer.logger false
    # The final weights too: a recipe that overfits has its best checkpoint before the last step.
    [ -f "$ckpt_dir/last.ckpt" ] && step "validate_${tag}_last" "$T_VALIDATE" $PY -m babygpt_pl.cli validate \
        "${common[@]}" --ckpt_path "$ckpt_dir/last.ckpt" --trainer.logger false
done

# --- 5. text from each best checkpoint ---
for tag in "${TAGS[@]}"; do
    [ "$PREDICT" = 1 ] && [ -f "$OUT/best_$tag.txt" ] || continue
    step "predict_$tag" "$T_PREDICT" $PY -m babygpt_pl.cli predict --ckpt_path "$(cat "$OUT/best_$tag.txt")" \
        --generation.max_new_tokens 100 --generation.seed 0 --generation.output "$OUT/predict_$tag.jsonl"
done

# --- summary: every step's figures in one JSON ---
$PY - "$OUT" "${TAGS[*]}" <<'EOF'
import json, re, sys
from pathlib import Path

out = Path(sys.argv[1])


def read_json(name):
    path = out / name
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def last_json_line(name):
    path = out / name
    lines = path.read_text().splitlines() if path.exists() else []
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                pass
    return None


def validated_loss(step_name):
    """The val loss in a validate step's printed table, or None."""
    log = out / f"{step_name}.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    found = re.findall(r"val_loss\s*[│|]\s*([0-9.eE+-]+|nan|inf)", text)
    return float(found[-1]) if found else None


def val_loss(name):
    """From validate's printed table, else from the best checkpoint's file name."""
    found = validated_loss(f"validate_{name}")
    if found is not None:
        return found, "validate"
    best = out / f"best_{name}.txt"
    hit = re.search(r"val_loss=([0-9.]+)", best.read_text()) if best.exists() else None
    return (float(hit.group(1).rstrip(".")), "checkpoint name") if hit else (None, None)


def val_loss_by_step(name):
    """{step: val loss} from the names of the checkpoints the fit kept (all of them with save_top_k -1)."""
    listing = out / f"checkpoints_{name}.txt"
    names = listing.read_text().split() if listing.exists() else []
    found = (re.search(r"step=(\d+)-val_loss=([0-9.]+?)\.ckpt$", n) for n in names)
    return {int(m.group(1)): float(m.group(2)) for m in sorted(filter(None, found), key=lambda m: int(m.group(1)))}


steps = {}
for line in (out / "steps.tsv").read_text().splitlines():
    name, rc, secs = line.split("\t")
    steps[name] = {"rc": rc, "seconds": round(float(secs), 1)}

summary = {"gpu": None, "versions": {}, "steps": steps}
try:
    import torch

    summary["versions"]["torch"] = torch.__version__
    summary["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "none (cpu)"
except Exception as err:
    summary["gpu"] = f"torch failed: {err}"
for mod in ("lightning", "torchmetrics", "jsonargparse", "wandb", "babygpt_pl"):
    try:
        summary["versions"][mod] = getattr(__import__(mod), "__version__", "?")
    except Exception as err:
        summary["versions"][mod] = f"import failed: {type(err).__name__}"
summary["vs_seed"] = last_json_line("vs_seed.log")
summary["train_bench"] = read_json("train.json")
summary["generate_bench"] = read_json("generate.json")
summary["train_bench_reduce_overhead"] = read_json("train_ro.json")
for profile in sorted(out.glob("profile_fit*.txt")):
    wall = re.search(r"wall: ([0-9.]+) ms/step", profile.read_text())
    mode = profile.stem.removeprefix("profile_fit").lstrip("_") or "eager"
    summary[f"fit_loop_ms_per_step_{mode}"] = float(wall.group(1)) if wall else None
fits = sys.argv[2].split()
for name in fits:
    if f"fit_{name}" in steps:
        loss, source = val_loss(name)
        best = out / f"best_{name}.txt"
        summary[f"fit_{name}"] = {
            "wall_s": steps[f"fit_{name}"]["seconds"],
            "rc": steps[f"fit_{name}"]["rc"],
            "best_checkpoint": best.read_text().strip() if best.exists() else None,
            "val_loss": loss,
            "val_loss_from": source,
            "last_val_loss": validated_loss(f"validate_{name}_last"),
            "val_loss_by_step": val_loss_by_step(name),
        }
for name in fits:
    pred = out / f"predict_{name}.jsonl"
    if pred.exists():
        summary[f"predict_{name}"] = [json.loads(line) for line in pred.read_text().splitlines() if line.strip()]
(out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
print(json.dumps({k: summary[k] for k in ("gpu", "versions", "steps")}, indent=1))
print(f"wrote {out / 'summary.json'}")
EOF
log "done in $(($(date +%s) - START)) s; results in $OUT"
