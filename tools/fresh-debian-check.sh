#!/usr/bin/env bash
# Runs one of the README's commands on a fresh, minimal Debian 12 (bookworm) system, to prove
# that a clean clone sets itself up, builds and passes from nothing.
#
# Usage: bash tools/fresh-debian-check.sh [quickstart|test|ci|deps|shell] [REPO_DIR]
#   quickstart  bash tools/quickstart.sh      (README command 1)
#   test        bash tools/test.sh            (README command 2; the default)
#   ci          bash .ci/run
#   deps        bash tools/install-deps.sh    (only the package step, to time it)
#   shell       an interactive shell in the same container, for digging into a failure
#   REPO_DIR    repository to check (default: the one holding this script). Only committed
#               files are used: the check runs on a fresh `git clone` of REPO_DIR's HEAD.
#
# How: the clone is mounted at /work/<name> in a container made from the image
# localhost/eora-bookworm-minbase (debootstrap --variant=minbase bookworm, imported into podman;
# built here on first use), and REPO_DIR/../shared, if present, is mounted read-only at
# /work/shared, so tests that look for ../shared find it. The command runs as root, as written
# in the README, with 2 CPUs, output streamed; the script exits with the command's exit code
# and prints the elapsed time.
#
# Needs, on the host, as root: podman, runc, git, and (only to build the image) debootstrap.
#   apt-get install podman runc uidmap debootstrap git
# Network: the container uses the host's network (--network=host) and needs the Debian archive.
#
# Environment:
#   IMAGE        image name              (default localhost/eora-bookworm-minbase)
#   ROOTFS       debootstrap directory   (default /var/tmp/eora-bookworm)
#   MIRROR       Debian mirror           (default http://deb.debian.org/debian)
#   REBUILD_IMAGE=1   re-import the image from ROOTFS even if it exists
#   REBUILD_ROOTFS=1  also redo the debootstrap
#   CPUS         CPUs for the container  (default 2; empty: no limit)
#   KEEP=1       keep the clone (its build directory is there) instead of deleting it
#   TIMESTAMPS=1 prefix every output line with the seconds elapsed since the start
#   PASS_ENV     space-separated names of host variables to pass in (e.g. "JOBS EORA_CUDA")
set -euo pipefail

MODE=${1:-test}
SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
REPO_DIR=${2:-$(git -C "$SCRIPT_DIR" rev-parse --show-toplevel)}
IMAGE=${IMAGE:-localhost/eora-bookworm-minbase}
ROOTFS=${ROOTFS:-/var/tmp/eora-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
CPUS=${CPUS-2}

case "$MODE" in
  quickstart) CMD='bash tools/quickstart.sh' ;;
  test)       CMD='bash tools/test.sh' ;;
  ci)         CMD='bash .ci/run' ;;
  deps)       CMD='bash tools/install-deps.sh' ;;
  shell)      CMD='bash' ;;
  -h|--help|help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "fresh-debian-check: unknown mode '$MODE' (quickstart|test|ci|deps|shell)" >&2; exit 2 ;;
esac

die() { echo "fresh-debian-check: $*" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || die "run as root (podman with runc as root is what works here)"
for tool in podman runc git; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' is missing: apt-get install podman runc uidmap debootstrap git"
done
REPO_DIR=$(cd "$REPO_DIR" && git rev-parse --show-toplevel) || die "$REPO_DIR is not a git repository"
NAME=$(basename "$REPO_DIR")

# podman as root works here with runc (not crun) and lowered ulimits.
PODMAN=(podman --runtime "$(command -v runc)")
LIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1000:1000)

build_image() {
  command -v debootstrap >/dev/null 2>&1 || die "image $IMAGE is missing and debootstrap is not installed (apt-get install debootstrap)"
  # An interrupted debootstrap leaves $ROOTFS/debootstrap behind; a finished one removes it.
  if [ "${REBUILD_ROOTFS:-0}" = 1 ] || [ ! -x "$ROOTFS/usr/bin/apt-get" ] || [ -d "$ROOTFS/debootstrap" ]; then
    echo "== debootstrap --variant=minbase bookworm $ROOTFS $MIRROR"
    rm -rf "$ROOTFS"
    debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR"
  fi
  # The apt sources a fresh Debian 12 install has: main, updates and security.
  rm -f "$ROOTFS/etc/apt/sources.list"
  local security=${MIRROR%/debian}/debian-security
  cat > "$ROOTFS/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  # No package lists or downloaded .debs in the image: apt starts from nothing, as on a new machine.
  rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/lib/apt/lists/*
  mkdir -p "$ROOTFS/var/lib/apt/lists/partial"
  echo "== podman import $ROOTFS -> $IMAGE"
  tar -C "$ROOTFS" -c . | podman import - "$IMAGE"
}

if [ "${REBUILD_IMAGE:-0}" = 1 ] || [ "${REBUILD_ROOTFS:-0}" = 1 ] || ! podman image exists "$IMAGE"; then
  build_image
fi

# A clean clone: only committed files, none of the host's build directories or local edits.
WORK=$(mktemp -d /var/tmp/eora-fresh.XXXXXX)
CONTAINER=eora-fresh-$$
# shellcheck disable=SC2317  # called from the EXIT trap
cleanup() {
  podman rm -f "$CONTAINER" >/dev/null 2>&1 || true
  if [ "${KEEP:-0}" = 1 ]; then echo "fresh-debian-check: clone kept in $WORK/$NAME"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
git clone --quiet --no-hardlinks "$REPO_DIR" "$WORK/$NAME"
HEAD=$(git -C "$WORK/$NAME" log -1 --format='%h %s')

MOUNTS=(-v "$WORK/$NAME:/work/$NAME")
WHERE="mounted at /work/$NAME"
SHARED=$(dirname "$REPO_DIR")/shared
if [ -d "$SHARED" ]; then
  MOUNTS+=(-v "$SHARED:/work/shared:ro")
  WHERE+="; $SHARED at /work/shared (read-only)"
fi

OPTS=(--rm --name "$CONTAINER" --network=host "${LIMITS[@]}" -w "/work/$NAME")
if [ -n "$CPUS" ]; then
  # --cpus needs the cgroup cpu controller; go on without the limit where it is not there.
  if "${PODMAN[@]}" run --rm "${LIMITS[@]}" --cpus "$CPUS" "$IMAGE" true >/dev/null 2>&1; then
    OPTS+=(--cpus "$CPUS")
  else
    echo "fresh-debian-check: --cpus $CPUS is not supported here; running without a CPU limit" >&2
  fi
fi
for v in ${PASS_ENV:-}; do
  if [ -n "${!v+x}" ]; then OPTS+=(-e "$v=${!v}"); fi
done
if [ "$MODE" = shell ]; then OPTS+=(-it); fi

echo "== fresh Debian 12 ($IMAGE): $CMD"
echo "== clean clone of $REPO_DIR at $HEAD, $WHERE"
START=$(date +%s)
set +e
if [ "${TIMESTAMPS:-0}" = 1 ] && [ "$MODE" != shell ]; then
  "${PODMAN[@]}" run "${OPTS[@]}" "${MOUNTS[@]}" "$IMAGE" bash -c "$CMD" 2>&1 |
    while IFS= read -r line; do printf '[%5ds] %s\n' "$(( $(date +%s) - START ))" "$line"; done
  RC=${PIPESTATUS[0]}
else
  "${PODMAN[@]}" run "${OPTS[@]}" "${MOUNTS[@]}" "$IMAGE" bash -c "$CMD"
  RC=$?
fi
set -e
ELAPSED=$(( $(date +%s) - START ))
printf '== %s: exit code %d, elapsed %dm%02ds\n' "$CMD" "$RC" $((ELAPSED / 60)) $((ELAPSED % 60))
exit "$RC"
