#!/usr/bin/env bash
# The dependency lock: requirements/dev.lock (runtime + test + dev extras, what
# CI and README's install use) and requirements/runtime.lock (runtime only, what
# the zipapp ships), both with exact versions and hashes, resolved for every
# platform (--universal) from Python 3.11 up. pyproject.toml keeps the ranges.
#
#   lock.sh refresh   re-resolve after a pyproject.toml change, keeping every
#                     pin that still fits (uv reads the existing lock first)
#   lock.sh upgrade   move every pin to the newest release the ranges allow
#   lock.sh check     fail when pyproject.toml and the locks disagree
set -euo pipefail
cd "$(dirname "$0")/.."

compile() {  # compile OUT_DIR [extra uv args...]
    local out="$1"
    shift
    uv pip compile pyproject.toml --extra test --extra dev \
        --generate-hashes --universal --python-version 3.11 \
        --custom-compile-command "just lock" --quiet "$@" -o "$out/dev.lock"
    # Runtime pins are constrained to the dev lock, so both agree.
    uv pip compile pyproject.toml \
        --generate-hashes --universal --python-version 3.11 \
        --custom-compile-command "just lock" --quiet "$@" \
        -c "$out/dev.lock" -o "$out/runtime.lock"
}

case "${1:-}" in
refresh) compile requirements ;;
upgrade) compile requirements --upgrade ;;
check)
    # Resolve again in a copy (same relative paths, so the comments match);
    # uv keeps every pin of the existing lock that still satisfies the ranges.
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    mkdir "$tmp/requirements"
    cp pyproject.toml "$tmp/"
    cp requirements/dev.lock requirements/runtime.lock "$tmp/requirements/"
    (cd "$tmp" && compile requirements)
    if ! diff -u requirements/dev.lock "$tmp/requirements/dev.lock" ||
        ! diff -u requirements/runtime.lock "$tmp/requirements/runtime.lock"; then
        echo "lock-check: pyproject.toml and requirements/*.lock disagree; run 'just lock' and commit" >&2
        exit 1
    fi
    echo "lock-check: requirements/*.lock match pyproject.toml"
    ;;
*)
    echo "usage: $0 refresh|upgrade|check" >&2
    exit 2
    ;;
esac
