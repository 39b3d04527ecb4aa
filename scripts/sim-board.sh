#!/bin/sh
# Start, stop or query the local sim board (an OpenSSH sshd on 127.0.0.1 posing as an Atlas board).
# A thin wrapper over `atlas-kd sim-board`; all options pass through:
#   scripts/sim-board.sh start [--name NAME] [--state DIR]     prints BOARD=... SSH_CONFIG=...
#   scripts/sim-board.sh status|stop [--name NAME] [--state DIR]
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
if [ -x "$repo/.venv/bin/atlas-kd" ]; then
    exec "$repo/.venv/bin/atlas-kd" sim-board "$@"
fi
if command -v atlas-kd >/dev/null 2>&1; then
    exec atlas-kd sim-board "$@"
fi
echo "sim-board.sh: error: atlas-kd not found: run 'make venv' in $repo first" >&2
exit 2
