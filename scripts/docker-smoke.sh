#!/usr/bin/env bash
# Smoke test of the container image: build it, run it, wait for healthy, score a real clip.
#
#   scripts/docker-smoke.sh
#
# Prints the image size and the time from `docker run` to healthy; exits non-zero on any
# failure; removes its container on every exit. Settings (environment):
#   IMAGE=machine-sound-asd:smoke   tag to build/run
#   DOCKER=docker                   docker client (default: the first `docker` on PATH that can
#                                   build with BuildKit: one with the buildx plugin, or a client
#                                   older than 23 with BuildKit built in)
#   MAX_IMAGE_MB=300                fail when the image is larger (decimal MB)
#   BUILD_OPTS="..."                extra `docker build` options (--network=host, --secret id=ca,...)
#   SKIP_BUILD=1                    run an already built $IMAGE
#   RUN_NETWORK=bridge|host         host: no port mapping, the service binds 127.0.0.1:$PORT itself
#   MODELS_DIR=path                 mount this folder read-only at /models (as docker-compose.yml
#                                   does) instead of using the models baked into the image
#   CLIP=path.wav                   default ../shared/data/real-recordings/mimii-8ch/slider_normal.wav
#   TIMEOUT=90                      seconds to wait for healthy
#   HEALTH_INTERVAL=1s              health probe interval for this run (the image's is 10s, so the
#                                   measured time is the service's start-up, not the probe period)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE="${IMAGE:-machine-sound-asd:smoke}"
MAX_IMAGE_MB="${MAX_IMAGE_MB:-300}"
BUILD_OPTS="${BUILD_OPTS:-}"
RUN_NETWORK="${RUN_NETWORK:-bridge}"
CLIP="${CLIP:-$REPO/../shared/data/real-recordings/mimii-8ch/slider_normal.wav}"
TIMEOUT="${TIMEOUT:-90}"
HEALTH_INTERVAL="${HEALTH_INTERVAL:-1s}"
PYTHON="${PYTHON:-python3}"

log() { printf '[docker-smoke] %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
now() { date +%s.%N; }

# Docker >= 23 clients build through the buildx plugin and fail without it; older ones carry
# BuildKit themselves. A machine may have both (e.g. a static client in /usr/local/bin without
# the plugin, and the distribution's engine and client in /usr/bin).
can_build() {
    "$1" buildx version >/dev/null 2>&1 && return 0
    local major
    major=$("$1" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1) || return 1
    [[ "$major" =~ ^[0-9]+$ ]] && (( major < 23 ))
}
if [[ -z "${DOCKER:-}" ]]; then
    mapfile -t clients < <(type -ap docker)
    [[ ${#clients[@]} -gt 0 ]] || die "no docker client on PATH"
    DOCKER=${clients[0]}
    if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
        for client in "${clients[@]}"; do
            if can_build "$client"; then DOCKER=$client; break; fi
        done
        if [[ "$DOCKER" != "${clients[0]}" ]]; then
            log "using $DOCKER: ${clients[0]} has no BuildKit (no buildx plugin)"
        fi
    fi
fi
command -v "$DOCKER" >/dev/null || die "docker client '$DOCKER' not found"
if [[ "${SKIP_BUILD:-0}" != 1 ]] && ! can_build "$DOCKER"; then
    die "'$DOCKER' cannot build with BuildKit: install the buildx plugin, or set DOCKER= to a client that can"
fi
command -v curl >/dev/null || die "curl not found"
[[ -f "$CLIP" ]] || die "clip not found: $CLIP (set CLIP=...)"
"$DOCKER" info >/dev/null 2>&1 || die "no Docker engine reachable with '$DOCKER'"

# --- build -------------------------------------------------------------------------------------
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building $IMAGE ${BUILD_OPTS:+(options: $BUILD_OPTS)}"
    build_start=$(now)
    # shellcheck disable=SC2086  # BUILD_OPTS is a list of options, split on purpose
    DOCKER_BUILDKIT=1 "$DOCKER" build $BUILD_OPTS -t "$IMAGE" "$REPO" || die "docker build failed"
    log "build took $(awk -v a="$build_start" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}') s"
fi
size_bytes=$("$DOCKER" image inspect --format '{{.Size}}' "$IMAGE") || die "no image $IMAGE"

# --- run ---------------------------------------------------------------------------------------
PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
NAME="asd-smoke-$$"
cleanup() {
    local rc=$?
    if "$DOCKER" container inspect "$NAME" >/dev/null 2>&1; then
        if [[ $rc -ne 0 ]]; then
            log "container logs (without the /ready probes):"
            "$DOCKER" logs "$NAME" 2>&1 | grep -v '"path": "/ready"' | tail -n 40 >&2 || true
        fi
        "$DOCKER" rm -f "$NAME" >/dev/null 2>&1 || true
    fi
    exit "$rc"
}
trap cleanup EXIT

# The same hardening as docker-compose.yml: read-only root, tmpfs /tmp, no capabilities.
run_opts=(--detach --name "$NAME" --read-only --tmpfs /tmp:size=64m --cap-drop ALL
          --security-opt no-new-privileges:true --health-interval "$HEALTH_INTERVAL")
if [[ -n "${MODELS_DIR:-}" ]]; then
    [[ -d "$MODELS_DIR" ]] || die "MODELS_DIR is not a folder: $MODELS_DIR"
    run_opts+=(--volume "$(cd "$MODELS_DIR" && pwd):/models:ro")
fi
if [[ "$RUN_NETWORK" == host ]]; then
    run_opts+=(--network host --env ASD_HOST=127.0.0.1 --env "ASD_PORT=$PORT")
else
    run_opts+=(--publish "127.0.0.1:$PORT:8000")
fi

run_start=$(now)
"$DOCKER" run "${run_opts[@]}" "$IMAGE" >/dev/null || die "docker run failed"
log "container $NAME started, service on 127.0.0.1:$PORT ($RUN_NETWORK network)"

ready_at=""
status=""
deadline=$(( $(date +%s) + TIMEOUT ))
while :; do
    status=$("$DOCKER" inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$NAME" 2>/dev/null) \
        || die "container vanished"
    [[ "$status" == healthy ]] && break
    [[ "$status" == none ]] && die "the image has no HEALTHCHECK"
    [[ "$("$DOCKER" inspect --format '{{.State.Running}}' "$NAME")" == true ]] || die "container exited"
    if [[ -z "$ready_at" ]] && curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$PORT/ready" 2>/dev/null; then
        ready_at=$(now)
    fi
    [[ $(date +%s) -lt $deadline ]] || die "not healthy within ${TIMEOUT}s (status: $status)"
    sleep 0.1
done
healthy_at=$(now)
elapsed() { awk -v a="$run_start" -v b="$1" 'BEGIN {printf "%.2f", b - a}'; }
[[ -n "$ready_at" ]] || ready_at=$healthy_at
# When the container's process started (daemon clock = this host's): separates the engine's
# create/start cost (storage driver, network setup) from the service's own start-up.
started_at=$(date -d "$("$DOCKER" inspect --format '{{.State.StartedAt}}' "$NAME")" +%s.%N)

# --- score a real clip -------------------------------------------------------------------------
curl -fsS --max-time 5 "http://127.0.0.1:$PORT/health" >/dev/null || die "/health failed"
answer=$(curl -sS --max-time 60 -w '\n%{http_code}' -F "file=@$CLIP;type=audio/wav" \
    "http://127.0.0.1:$PORT/v1/score") || die "POST /v1/score failed"
code=${answer##*$'\n'}
body=${answer%$'\n'*}
[[ "$code" == 200 ]] || die "POST /v1/score answered HTTP $code: $body"
summary=$(printf '%s' "$body" | "$PYTHON" -c '
import json, math, sys
answer = json.load(sys.stdin)
decision, score = answer.get("decision"), answer.get("score")
assert decision in ("normal", "anomalous"), f"decision: {decision!r}"
assert isinstance(score, (int, float)) and not isinstance(score, bool) and math.isfinite(score), f"score: {score!r}"
threshold, model = answer.get("threshold"), answer.get("model")
print(f"decision={decision} score={score:.6g} threshold={threshold} model={model}")
') || die "unexpected answer: $body"

# --- report ------------------------------------------------------------------------------------
user=$("$DOCKER" exec "$NAME" id -u)
[[ "$user" != 0 ]] || die "the service runs as root"
log "scored $(basename "$CLIP"): $summary"
printf 'image:              %s\n' "$IMAGE"
printf 'image size:         %s MB (%s bytes)\n' "$(awk -v s="$size_bytes" 'BEGIN {printf "%.1f", s / 1e6}')" "$size_bytes"
printf 'run -> process up:  %s s (engine: create + start)\n' "$(elapsed "$started_at")"
printf 'run -> /ready 200:  %s s\n' "$(elapsed "$ready_at")"
printf 'run -> healthy:     %s s (health probe every %s)\n' "$(elapsed "$healthy_at")" "$HEALTH_INTERVAL"
printf 'container uid:      %s\n' "$user"
printf 'score answer:       %s\n' "$summary"
size_mb=$(awk -v s="$size_bytes" 'BEGIN {printf "%.1f", s / 1e6}')
awk -v s="$size_mb" -v m="$MAX_IMAGE_MB" 'BEGIN {exit !(s <= m)}' \
    || die "image is $size_mb MB, more than MAX_IMAGE_MB=$MAX_IMAGE_MB"
printf 'SMOKE OK\n'
