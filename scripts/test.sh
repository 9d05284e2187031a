#!/usr/bin/env bash
# README command 2: install what is missing, lint, and run the whole test suite against a real throwaway
# cluster (the suite starts its own, with pg_cron, pgvector, pgcrypto and statement logging on).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow".
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/install.sh"
# The web pages' tests drive Debian's Chromium with Playwright (the system browser: `playwright install` would
# download its own build, which cannot work here).
bash "$ROOT/scripts/install.sh" --browser
cd "$ROOT"
.venv/bin/ruff check worker tests bench
exec .venv/bin/pytest "$@"
