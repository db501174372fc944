#!/usr/bin/env bash
# Nightly bigcos run on one machine. Install with `crontab -e`:
#   15 2 * * *  /opt/bigcos/jobs/templates/cron.sh /opt/bigcos/jobs/movielens-small.toml
# Environment: BIGCOS_VENV (virtualenv with bigcos), BIGCOS_LOG_DIR (default: ~/bigcos-logs).
# A run that finds a previous one still going exits at once (flock); a re-run resumes.
set -euo pipefail
job=${1:?usage: cron.sh JOB.toml [bigcos run options...]}
shift
venv=${BIGCOS_VENV:-$HOME/.venvs/bigcos}
logs=${BIGCOS_LOG_DIR:-$HOME/bigcos-logs}
mkdir -p "$logs"
exec 9>"$logs/.lock"
flock -n 9 || { echo "bigcos: a previous run still holds $logs/.lock" >&2; exit 0; }
"$venv/bin/bigcos" --quiet run "$job" --no-progress "$@" >>"$logs/$(date +%F).log" 2>&1
