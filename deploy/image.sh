#!/usr/bin/env bash
# The umi agent's production image, from a built Bento (`umi deploy build`): opt-in, never part of `make test`.
#
#   deploy/image.sh [BENTO_TAG]          # default umi-agent:latest; the same as `make image`
#
# Steps (the base is built once, UMI_IMAGE_REBUILD_BASE=1 rebuilds it; later runs reuse the wheels and Docker's cache):
#   1. base   the Bento's base image (umi/serve/service.py IMAGE: umi-python:3.11-bookworm): Debian bookworm minbase,
#             its Python 3.11 and uv, nothing else: no compiler, no pip. Built locally, so no image registry is needed.
#   2. wheels every package of the Bento as a wheel, made on this host by its own pip (so from the indexes this host
#             installs requirements.lock from: torch's CPU build included), sdists built into wheels here.
#   3. image  `bentoml containerize`: the image's uv installs from those wheels only (no index, no source builds,
#             served to the build on 127.0.0.1), then prints the image's size and what takes it.
#   4. check  (UMI_IMAGE_CHECK=0 skips it) runs the image on 127.0.0.1 and asks /health and one chat turn.
# Needs: root (debootstrap), a running Docker daemon, the project venv. Then run it (docs/serving.md):
#   docker run --rm -p 3000:3000 -e UMI_SERVE_API_KEY=... umi-agent:<version>
set -euo pipefail

BENTO=${1:-umi-agent:latest}
PY=${UMI_IMAGE_PYTHON:-.venv/bin/python}
WORK=${UMI_IMAGE_WORK:-/tmp/umi-image}
SUITE=bookworm                       # the Debian release whose Python is 3.11, the lock's (cp311 wheels)
UV_VERSION=0.13.9                    # the uv inside the base, which installs the Bento's packages
WHEEL_PORT=${UMI_IMAGE_WHEEL_PORT:-38917}

say() { printf '\n== %s\n' "$*"; }
die() { printf 'image.sh: %s\n' "$*" >&2; exit 1; }

docker info >/dev/null 2>&1 || die "no Docker daemon answers (start one: dockerd, or systemctl start docker)"
"$PY" -m bentoml --version >/dev/null 2>&1 || die "no BentoML in $PY (run make setup, or set UMI_IMAGE_PYTHON)"
BENTO_PATH=$("$PY" -m bentoml get "$BENTO" -o path 2>/dev/null) || die "no Bento $BENTO (umi deploy build makes one)"
read -r BENTO_TAG BASE_IMAGE < <("$PY" -c 'import sys, yaml; b = yaml.safe_load(open(sys.argv[1]))
print(b["name"] + ":" + b["version"], (b.get("image") or {}).get("base_image", ""))' "$BENTO_PATH/bento.yaml")
[ "$BASE_IMAGE" = "umi-python:3.11-bookworm" ] || die "$BENTO_TAG was built on base image '$BASE_IMAGE', not this script's"
if grep -q build-essential "$BENTO_PATH/env/docker/Dockerfile"; then
  die "$BENTO_TAG's Dockerfile installs build-essential: rebuild it with umi deploy build"
fi

build_base() {
  command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
  [ "$(id -u)" = 0 ] || die "debootstrap needs root"
  local root="$WORK/rootfs"
  rm -rf "$root" "$WORK/uv" && mkdir -p "$root" "$WORK/uv"
  say "base: debootstrap $SUITE (minbase + python3) -> $root"
  # UMI_IMAGE_MIRROR: a Debian mirror, where debootstrap's default is not reachable
  debootstrap --variant=minbase --include=python3 "$SUITE" "$root" ${UMI_IMAGE_MIRROR:+"$UMI_IMAGE_MIRROR"} \
    >"$WORK/debootstrap.log" 2>&1 || die "debootstrap failed, see $WORK/debootstrap.log"
  say "base: uv $UV_VERSION"
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: "uv==$UV_VERSION" -d "$WORK/uv"
  "$PY" -m zipfile -e "$WORK"/uv/uv-"$UV_VERSION"-*.whl "$WORK/uv/x"
  install -m 0755 "$WORK/uv/x/uv-$UV_VERSION.data/scripts/uv" "$root/usr/local/bin/uv"
  rm -rf "$WORK/uv"
  # The image's uv installs the Bento's pins exactly as `make setup` installs requirements.lock: without resolving
  # dependencies (no-deps: nothing floats, and the lock's few metadata conflicts, e.g. torch's setuptools>=77, stay
  # as harmless as in the venv), from the build's wheel server only (no index), never from source (a compiler), with
  # the base's own Python. Only uv reads this file; nothing at run time does.
  mkdir -p "$root/etc/uv"
  cat >"$root/etc/uv/uv.toml" <<EOF
python-downloads = "never"
no-cache = true

[pip]
no-index = true
find-links = ["http://127.0.0.1:$WHEEL_PORT/"]
no-build = true
no-deps = true
EOF
  # what an image never reads: package lists and caches, docs, man pages, translations
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
    "$root"/var/log/*.log "$root"/var/log/apt/*
  say "base: docker import -> $BASE_IMAGE"
  tar -C "$root" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' \
    --message "umi: Debian $SUITE minbase, python3 $(chroot "$root" python3 -c 'import platform; print(platform.python_version())'), uv $UV_VERSION" \
    - "$BASE_IMAGE" >/dev/null
  rm -rf "$root"
}

if [ "${UMI_IMAGE_REBUILD_BASE:-0}" = 1 ] || ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  build_base
else
  say "base: $BASE_IMAGE is there (UMI_IMAGE_REBUILD_BASE=1 rebuilds it)"
  docker run --rm "$BASE_IMAGE" cat /etc/uv/uv.toml | grep -qF "127.0.0.1:$WHEEL_PORT/" ||
    die "$BASE_IMAGE expects its wheels on another port than $WHEEL_PORT: UMI_IMAGE_REBUILD_BASE=1"
fi

WHEELS="$WORK/wheels"
mkdir -p "$WHEELS"
say "wheels: $BENTO_TAG's requirements -> $WHEELS"
# the Bento's requirements, and what its setup script installs (bfcl-eval, without its dependencies)
grep -ohE '[A-Za-z0-9_.-]+==[A-Za-z0-9_.+!-]+' "$BENTO_PATH"/env/docker/script__* >"$WORK/setup-requirements.txt"
"$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps --find-links "$WHEELS" -w "$WHEELS" \
  -r "$BENTO_PATH/env/python/requirements.txt" -r "$WORK/setup-requirements.txt" >"$WORK/wheels.log" 2>&1 ||
  die "pip wheel failed, see $WORK/wheels.log"
echo "$(ls "$WHEELS" | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1)"

say "image: bentoml containerize $BENTO_TAG"
"$PY" -m http.server "$WHEEL_PORT" --bind 127.0.0.1 --directory "$WHEELS" >"$WORK/wheel-server.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true' EXIT
# host network: the build reaches the wheel server on 127.0.0.1 and nothing else needs the network.
# DOCKER_BUILDKIT=0 where the docker CLI has no buildx plugin (the classic builder keeps its layer cache too).
if ! docker buildx version >/dev/null 2>&1; then export DOCKER_BUILDKIT=0; fi
"$PY" -m bentoml containerize "$BENTO_TAG" --opt network=host >"$WORK/containerize.log" 2>&1 ||
  { tail -40 "$WORK/containerize.log"; die "containerize failed, see $WORK/containerize.log"; }
kill "$SERVER" 2>/dev/null || true

IMAGE=$BENTO_TAG
say "image: $IMAGE"
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' "${IMAGE%%:*}" | grep -F "$IMAGE" || true
echo "layers (largest first):"
docker history --no-trunc --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" | sort -h -r | head -8 | cut -c1-150
echo "inside (MB): "
docker run --rm --entrypoint /bin/sh "$IMAGE" -c '
  du -sm /home/bentoml/bento/models /app/.venv /usr 2>/dev/null
  echo "largest packages:"; du -sm /app/.venv/lib/python3.11/site-packages/* | sort -n -r | head -8
  found=""; for tool in cc gcc g++ c++ clang ld as make; do command -v "$tool" >/dev/null && found="$found $tool"; done
  echo "compiler toolchain:${found:- none}"'

if [ "${UMI_IMAGE_CHECK:-1}" = 1 ]; then
  # On the host's loopback only (host network, bound to 127.0.0.1): /readyz, /health and one chat turn.
  PORT=${UMI_IMAGE_CHECK_PORT:-38000}
  NAME="umi-image-check-$$"
  say "check: docker run $IMAGE on 127.0.0.1:$PORT"
  docker run -d --rm --name "$NAME" --network host -e BENTOML_HOST=127.0.0.1 -e BENTOML_PORT="$PORT" "$IMAGE" >/dev/null
  trap 'docker stop "$NAME" >/dev/null 2>&1 || true; kill "$SERVER" 2>/dev/null || true' EXIT
  ready=""
  for _ in $(seq 180); do
    curl -fs -o /dev/null -m 2 "http://127.0.0.1:$PORT/readyz" && { ready=1; break; }
    sleep 1
  done
  [ -n "$ready" ] || { docker logs "$NAME" 2>&1 | tail -20; die "the container was not ready within 180 s"; }
  curl -fs -m 10 "http://127.0.0.1:$PORT/health" | "$PY" -c 'import json, sys; h = json.load(sys.stdin)
print("/health:", h["status"], {r: m["tag"] for r, m in h["models"].items()})'
  curl -fs -m 120 "http://127.0.0.1:$PORT/v1/chat/completions" -H 'content-type: application/json' -d '{"model": "umi-agent",
    "messages": [{"role": "user", "content": "What is the absolute value of -7?"}], "max_tokens": 64,
    "tools": [{"type": "function", "function": {"name": "absolute_value", "description": "Absolute value of a number",
      "parameters": {"type": "object", "properties": {"number": {"type": "number"}}, "required": ["number"]}}}]}' |
    "$PY" -c 'import json, sys; m = json.load(sys.stdin)["choices"][0]["message"]
print("chat turn:", json.dumps({"content": m.get("content"), "tool_calls": [c["function"] for c in m.get("tool_calls") or []]}))' ||
    die "the chat request failed"
  docker stop "$NAME" >/dev/null
fi
echo
echo "run it:  docker run --rm -p 3000:3000 [-e UMI_SERVE_API_KEY=...] $IMAGE"
