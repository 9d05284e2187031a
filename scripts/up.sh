#!/usr/bin/env bash
# README command 1: install what is missing, start the local cluster, migrate, register the default model,
# start a background worker, and answer a demo prompt submitted with an INSERT. Safe to re-run.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/install.sh"
exec "$ROOT/.venv/bin/pgreflect" up "$@"
