#!/bin/sh
# Test stand-in for salt-bootstrap: salt-cloud uploads the minion config, keys and grains next
# to this script and runs it over SSH (to the tests' sshd on this host). Instead of installing
# Salt on a new machine, start a salt-minion on this host with its own root dir, laid out as
# tools/checkout_master.HostMinion expects: $1/<id>/conf/{minion,grains}, pki under $1/<id>.
#   $1: base directory of the test's minions   $2: directory holding salt-minion
set -eu
upload_dir=$(cd "$(dirname "$0")" && pwd)
minion_id=$(sed -n 's/^id: *//p' "$upload_dir/minion")
root=$1/$minion_id
install -d -m 700 "$root/conf" "$root/etc/salt/pki/minion"
cp "$upload_dir/minion" "$root/conf/minion"
printf 'root_dir: %s\nenable_fqdns_grains: false\n' "$root" >>"$root/conf/minion"
if [ -f "$upload_dir/grains" ]; then
  cp "$upload_dir/grains" "$root/conf/grains"
fi
install -m 400 "$upload_dir/minion.pem" "$root/etc/salt/pki/minion/minion.pem"
install -m 644 "$upload_dir/minion.pub" "$root/etc/salt/pki/minion/minion.pub"
"$2/salt-minion" -c "$root/conf" -d
echo "started salt-minion $minion_id on this host"
