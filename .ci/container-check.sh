#!/usr/bin/env bash
# The image, built and run for real with podman (no Docker engine, no image registry): build the
# Dockerfile from a checkout made under umask 077, run it as the README and the Kubernetes
# Deployment do, and run docker-compose.yml through podman's Docker API.
# Needs root on Debian 12 with apt and PyPI; says SKIPPED and exits 0 where podman cannot be had.
# A debootstrapped bookworm stands in for the pinned python base (BASE_IMAGE build arg) and, where
# download.pytorch.org is unreachable, a local index on 127.0.0.1 for PyTorch's CPU index.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
TAG=bscheck-$$  # per run: concurrent runs on one machine do not touch each other's things
W=${CONTAINER_CHECK_DIR:-/tmp/$TAG}
BASE=localhost/$TAG-base:bookworm IMG=localhost/$TAG:latest
PY=${PYTHON:-python3}  # needs PyYAML: .ci/run passes its venv's python
T0=$SECONDS

skip() { echo "container check SKIPPED: $*"; exit 0; }
step() { echo "container check [$((SECONDS - T0)) s] $*"; }
[ "$(id -u)" = 0 ] || skip "needs root (podman, debootstrap); run .ci/run as root to build the image"
command -v apt-get >/dev/null || skip "no apt-get: podman, buildah, runc come from Debian's packages"
TOOLS=(podman buildah runc debootstrap docker-compose containernetworking-plugins iptables curl)
if ! command -v podman >/dev/null || ! command -v docker-compose >/dev/null \
  || ! command -v debootstrap >/dev/null || ! command -v runc >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${TOOLS[@]}"; } \
    >/dev/null 2>&1 || skip "podman, buildah, runc, docker-compose do not install here (apt)"
fi

# four loopback ports free right now: the torch index, the app, its health port, compose
read -r IDX_PORT APP_PORT HEALTH_PORT COMPOSE_PORT < <("$PY" -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
export CONTAINERS_CONF=$W/containers.conf DOCKER_HOST=unix://$W/podman.sock
export COMPOSE_PROJECT_NAME=$TAG
PIDS=()
cleanup() {
  set +e
  [ -f "$W/src/docker-compose.yml" ] && (cd "$W/src" && docker-compose down -t 30 >/dev/null 2>&1)
  podman rm -f -t 5 "$TAG-plain" "$TAG-k8s" >/dev/null 2>&1
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  if [ -z "${KEEP:-}" ]; then
    podman rmi -f "$IMG" "$BASE" >/dev/null 2>&1
    # the build's cached intermediate layers carry the label; other images on the machine do not
    podman image prune -f --filter "label=batchserve-check=$TAG" >/dev/null 2>&1
    rm -rf "$W"
  fi
}
trap cleanup EXIT
trap 'echo "container check FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR
rm -rf "$W" && mkdir -p "$W"
# This sandbox: no CAP_SYS_RESOURCE (podman's default rlimits are refused), and crun fails on
# hybrid cgroups. Harmless elsewhere.
cat >"$CONTAINERS_CONF" <<EOF
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOF

step "base image: debootstrap bookworm with exactly what the Dockerfile says a base needs"
MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
[ -n "$MIRROR" ] || MIRROR=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$W/rootfs" "${MIRROR:-http://deb.debian.org/debian}" >"$W/debootstrap.log" 2>&1 \
  || { tail -20 "$W/debootstrap.log"; exit 1; }
# the machine's extra CAs (an egress proxy's) are trusted in the base too, for pip -> PyPI
cp /usr/local/share/ca-certificates/*.crt "$W/rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
chroot "$W/rootfs" update-ca-certificates >/dev/null 2>&1
rm -rf "$W/rootfs/var/lib/apt/lists/"* "$W/rootfs/var/cache/apt/archives/"*.deb
tar --numeric-owner -C "$W/rootfs" -cf - . | podman import -q - "$BASE" >/dev/null
rm -rf "$W/rootfs"

step "torch index"
if curl -sf -m 10 -o /dev/null https://download.pytorch.org/whl/cpu/torch/; then
  TORCH_INDEX=https://download.pytorch.org/whl/cpu
else  # PyTorch's CPU wheel from pip's configured sources, and torch's own dependencies
  mkdir -p "$W/dl" "$W/index/simple"
  "$PY" -m pip download -q --dest "$W/dl" -c "$REPO/constraints.txt" torch==2.13.0 >"$W/dl.log" 2>&1 \
    || { tail -5 "$W/dl.log"; exit 1; }
  ls "$W"/dl/torch-2.13.0+cpu-*.whl >/dev/null 2>&1 \
    || { echo "no CPU build of torch 2.13.0 here and download.pytorch.org unreachable" >&2; exit 1; }
  for f in "$W"/dl/*.whl; do
    n=$(basename "$f" | cut -d- -f1 | tr 'A-Z_.' 'a-z--')
    mkdir -p "$W/index/simple/$n" && ln "$f" "$W/index/simple/$n/"
  done
  (cd "$W/index" && exec "$PY" -m http.server "$IDX_PORT" --bind 127.0.0.1 >"$W/index.log" 2>&1) &
  PIDS+=($!)
  TORCH_INDEX=http://127.0.0.1:$IDX_PORT/simple
fi

step "build context: the working tree, checked out under umask 077"
(cd "$REPO" && git ls-files -z -co --exclude-standard | tar --null -T - -cf -) \
  | (umask 077 && mkdir "$W/src" && tar -xf - --no-same-permissions -C "$W/src")
WEIGHTS=$W/src/models/repository/names-rnn/1/model.safetensors
[ "$(stat -c %a "$WEIGHTS")" = 600 ] || { echo "the umask 077 copy is not 0600" >&2; exit 1; }

build() {
  podman build --format docker --network host --label "batchserve-check=$TAG" \
    --build-arg BASE_IMAGE="$BASE" --build-arg TORCH_INDEX="$TORCH_INDEX" -t "$IMG" "$W/src" >"$1" 2>&1 \
    || { tail -30 "$1"; exit 1; }
}
step "podman build"
build "$W/build.log"
step "rebuild after a README edit: the dependency layers must come from the cache"
echo "edited" >>"$W/src/README.md"
build "$W/rebuild.log"
for cmd in "pip install torch==2.13.0" "pip install -c constraints.txt"; do
  grep -A1 -F "$cmd" "$W/rebuild.log" | grep -q "Using cache" \
    || { echo "the step '$cmd' ran again after a README edit" >&2; exit 1; }
done

wait_ready() {  # $1: base URL, $2: the container; up to 90 s, less if it exits
  for _ in $(seq 90); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -m 2 "$1/v2/health/ready")" = 200 ] && return 0
    [ "$(podman inspect "$2" --format '{{.State.Running}}')" = true ] \
      || { echo "$2 exited before it was ready" >&2; return 1; }
    sleep 1
  done
  echo "not ready at $1 in 90 s" >&2
  return 1
}
predict() {
  curl -sf -m 10 "$1/v1/models/names-rnn/predict" -H 'content-type: application/json' \
    -d '{"inputs": ["Nakamura"], "top_k": 1}' | grep -q '"label":"JP"'
}
stops_with_0() {  # $1: container. SIGTERM (the image's STOPSIGNAL), drain, exit 0, not killed
  podman stop -t 60 "$1" >/dev/null 2>>"$W/podman.log"
  local code
  code=$(podman inspect "$1" --format '{{.State.ExitCode}}')
  [ "$code" = 0 ] || { echo "$1 exited $code on SIGTERM" >&2; podman logs --tail 20 "$1" >&2; return 1; }
}

step "run with the image's defaults: ready, predict, HEALTHCHECK, SIGTERM -> exit 0"
# (podman's stderr to a log: without systemd it complains that it cannot time the healthchecks)
podman run -d --name "$TAG-plain" -p "127.0.0.1:$APP_PORT:8000" "$IMG" >/dev/null 2>>"$W/podman.log"
wait_ready "http://127.0.0.1:$APP_PORT" "$TAG-plain" || { podman logs --tail 20 "$TAG-plain"; exit 1; }
predict "http://127.0.0.1:$APP_PORT"
podman healthcheck run "$TAG-plain"  # the image's own HEALTHCHECK; rc 1 = unhealthy
stops_with_0 "$TAG-plain"

step "run as deploy/kubernetes/deployment.yaml does: its env, uid 10001, read-only root, no capabilities"
mapfile -t K8S_ENV < <("$PY" - "$REPO/deploy/kubernetes/deployment.yaml" <<'EOF'
import sys, yaml
pod = yaml.safe_load(open(sys.argv[1]))["spec"]["template"]["spec"]
for var in pod["containers"][0]["env"]:
    if "value" in var:  # not the optional Secret's keys
        print(f"--env={var['name']}={var['value']}")
EOF
)
podman run -d --name "$TAG-k8s" --user 10001:10001 --read-only --read-only-tmpfs=false --tmpfs /tmp \
  --cap-drop ALL --security-opt no-new-privileges "${K8S_ENV[@]}" \
  -p "127.0.0.1:$APP_PORT:8000" -p "127.0.0.1:$HEALTH_PORT:8081" "$IMG" >/dev/null 2>>"$W/podman.log"
wait_ready "http://127.0.0.1:$HEALTH_PORT" "$TAG-k8s" || { podman logs --tail 20 "$TAG-k8s"; exit 1; }
predict "http://127.0.0.1:$APP_PORT"
podman healthcheck run "$TAG-k8s"
stops_with_0 "$TAG-k8s"

step "BATCHSERVE_COMPILE=true without a compiler in the image: exit 2 at once, saying why"
OUT=$(timeout 120 podman run --rm -e BATCHSERVE_COMPILE=true "$IMG" 2>&1) && RC=0 || RC=$?
if [ "$RC" != 2 ] || ! grep -q "BATCHSERVE_COMPILE: .*C++" <<<"$OUT"; then
  echo "compile=true: rc $RC: $OUT" >&2
  exit 1
fi

step "docker-compose up / healthcheck / stop / down through podman's Docker API"
(exec podman system service --time=0 "$DOCKER_HOST" >"$W/service.log" 2>&1) &
PIDS+=($!)
for _ in $(seq 40); do curl -s --unix-socket "$W/podman.sock" http://d/_ping >/dev/null && break; sleep 0.5; done
cd "$W/src"
export BATCHSERVE_IMAGE=$IMG BATCHSERVE_PUBLISH=127.0.0.1:$COMPOSE_PORT
docker-compose up -d --no-build >"$W/compose.log" 2>&1 || { cat "$W/compose.log"; exit 1; }
[ "$(docker-compose ps -q | wc -l)" = 1 ]  # the gpu profile stays off
C=$(docker-compose ps -q batchserve)
wait_ready "http://127.0.0.1:$COMPOSE_PORT" "$C" || { podman logs --tail 20 "$C"; exit 1; }
predict "http://127.0.0.1:$COMPOSE_PORT"
[ "$(podman inspect "$C" --format '{{.HostConfig.ReadonlyRootfs}}')" = true ]
podman healthcheck run "$C"  # compose's healthcheck, as podman received it
docker-compose stop >/dev/null 2>&1
[ "$(podman inspect "$C" --format '{{.State.ExitCode}}')" = 0 ] || { podman logs --tail 20 "$C"; exit 1; }
docker-compose down >/dev/null 2>&1
step "PASS: image built from a umask 077 checkout; plain, Kubernetes-like and compose runs all served and stopped with 0"
