#!/usr/bin/env bash
# Deploy benchmark on the container lab: a first deploy on fresh containers, then a
# no-change re-deploy, measured side by side in one run. Prints the ratio re-deploy /
# first deploy, and checks that the re-deploy changed nothing.
#   bench/deploy.sh          (run from the repository root after `make bootstrap`)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

ansible-playbook playbooks/lab.yml -e lab_state=absent >/dev/null
ansible-playbook playbooks/lab.yml >/dev/null

log=$(mktemp)
trap 'rm -f "$log"' EXIT

start=$(date +%s.%N)
ansible-playbook playbooks/deploy.yml >"$log" 2>&1 || { tail -n 40 "$log" >&2; exit 1; }
first=$(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN { print a - b }')

start=$(date +%s.%N)
ansible-playbook playbooks/deploy.yml >"$log" 2>&1 || { tail -n 40 "$log" >&2; exit 1; }
second=$(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN { print a - b }')
changed=$(grep -Eo 'changed=[0-9]+' "$log" | awk -F= '{ n += $2 } END { print n + 0 }')

printf 'first deploy      %7.1f s\n' "$first"
printf 'no-change deploy  %7.1f s  (%.2fx the first; changed tasks: %s)\n' \
  "$second" "$(awk -v a="$second" -v b="$first" 'BEGIN { print a / b }')" "$changed"
