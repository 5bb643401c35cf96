#!/bin/sh
# Test stand-in for the salt bootstrap script that takes its time: it marks that the deploy
# started ($1/<minion id>.started), then sleeps, so a test can signal salt-cloud mid-deploy.
set -eu
upload_dir=$(dirname "$0")
minion_id=$(sed -n 's/^id: *//p' "$upload_dir/minion")
mkdir -p "$1"
touch "$1/$minion_id.started"
sleep 20
