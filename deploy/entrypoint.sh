#!/bin/sh
# Container entrypoint: turn *_FILE variables into the secrets they point at, then run the role's command.
# Secrets stay in mounted files (compose secrets, a kit folder); they never appear in the image or on a command line.
set -eu
for name in FEDCARE_ADMIN_TOKEN FEDCARE_BUDGET_DATABASE_URL; do
    eval "file=\${${name}_FILE:-}"
    if [ -n "$file" ]; then
        if [ ! -r "$file" ]; then
            echo "entrypoint: ${name}_FILE=$file is not readable by uid $(id -u); mount it, and give it to uid $(id -u) (chown) or make it group-readable" >&2
            exit 2
        fi
        value=$(cat "$file")
        export "$name=$value"
        unset "${name}_FILE"
    fi
done
mkdir -p "${HOME:-/var/lib/fedcare/home}" "${FLWR_HOME:-/var/lib/fedcare/flwr}" 2>/dev/null || true
exec "$@"
