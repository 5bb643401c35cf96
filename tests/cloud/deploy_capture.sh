#!/bin/sh
# Test stand-in for the salt bootstrap script: salt-cloud uploads the minion config, keys and grains
# next to this script and runs it over SSH; keep copies in $1/<minion id> instead of
# installing salt.
set -eu
upload_dir=$(dirname "$0")
minion_id=$(sed -n 's/^id: *//p' "$upload_dir/minion")
dest=$1/$minion_id
mkdir -p "$dest"
for file in minion minion.pem minion.pub grains; do
  if [ -f "$upload_dir/$file" ]; then
    cp "$upload_dir/$file" "$dest/$file"
  fi
done
echo "captured salt-cloud upload in $dest"
