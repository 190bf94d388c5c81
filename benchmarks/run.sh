#!/usr/bin/env bash
# Tiled-inference benchmark: napari-qlty against a clone() floor, MONAI and qlty 1.5.0.
#
#   bash benchmarks/run.sh                        # everything, CPU (about 15-25 min on 2 cores)
#   bash benchmarks/run.sh --workload 3d --methods ours,monai --device cuda
#   bash benchmarks/run.sh --help                 # all options
#
# Builds (once) a scratch virtual environment with the peers in $PEERS_VENV (default
# .venv-peers in the repo root; it never touches the project's .venv), then runs
# benchmarks/bench_stitch.py. The markdown table goes to stdout, progress to stderr.
# BENCH_PYTHON=/path/to/python skips the venv and uses that interpreter as it is (for a
# machine whose python already holds torch, monai and qlty, e.g. a GPU box without network).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$REPO/benchmarks/bench_stitch.py"

if [[ -n "${BENCH_PYTHON:-}" ]]; then
  exec "$BENCH_PYTHON" "$BENCH" "$@"
fi

VENV="${PEERS_VENV:-$REPO/.venv-peers}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
REQ="$REPO/benchmarks/requirements-peers.txt"
STAMP="$VENV/.peers-installed"
want="$(sha256sum "$REQ" | cut -d' ' -f1) torch==$TORCH_VERSION"

if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$want" ]]; then
  echo "run.sh: installing the peers into $VENV" >&2
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
  # keep git away from the scratch venv even where .gitignore has no line for it
  [[ -f "$VENV/.gitignore" ]] || echo '*' > "$VENV/.gitignore"
  PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
  # torch alone first (the CPU wheel where it lies on local disk), then everything else
  # with torch pinned on the same line so that the resolver cannot replace it
  "${PIP[@]}" "torch==$TORCH_VERSION" >&2
  "${PIP[@]}" -r "$REQ" "torch==$TORCH_VERSION" >&2
  "${PIP[@]}" --no-deps -e "$REPO" >&2
  got="$("$VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')"
  if [[ "$got" != "$TORCH_VERSION" ]]; then
    echo "run.sh: torch $got was installed instead of $TORCH_VERSION; not benchmarking" >&2
    exit 1
  fi
  echo "$want" > "$STAMP"
fi

exec "$VENV/bin/python" "$BENCH" "$@"
