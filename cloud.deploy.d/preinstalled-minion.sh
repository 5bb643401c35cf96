#!/bin/sh
# salt-cloud deploy script (profile key `script: preinstalled-minion`) for nodes whose image
# already has Salt installed (bin/build-node-image puts it in /opt/salt with a salt-minion
# unit that is not enabled): instead of downloading salt-bootstrap, install the minion
# config, grains and pre-accepted keys salt-cloud uploaded next to this script, then enable
# and start the minion.
#
# salt-cloud uploads into the directory this script runs from: minion (config), grains
# (class, docker_disk), minion.pem, minion.pub; it runs the script as root (sudo when
# ssh_username is not root).
set -eu
upload_dir=$(cd "$(dirname "$0")" && pwd)

if ! [ -x /opt/salt/bin/salt-minion ]; then
  echo "preinstalled-minion: /opt/salt/bin/salt-minion is missing: this image has no Salt;" \
    "use a salt-bootstrap script instead" >&2
  exit 1
fi
for file in minion minion.pem minion.pub; do
  if ! [ -f "$upload_dir/$file" ]; then
    echo "preinstalled-minion: salt-cloud did not upload $file to $upload_dir" >&2
    exit 1
  fi
done

install -d -m 755 /etc/salt
install -d -m 700 /etc/salt/pki /etc/salt/pki/minion
install -m 644 "$upload_dir/minion" /etc/salt/minion
if [ -f "$upload_dir/grains" ]; then
  install -m 644 "$upload_dir/grains" /etc/salt/grains
fi
install -m 400 "$upload_dir/minion.pem" /etc/salt/pki/minion/minion.pem
install -m 644 "$upload_dir/minion.pub" /etc/salt/pki/minion/minion.pub

systemctl enable --quiet salt-minion.service
systemctl restart salt-minion.service
echo "preinstalled-minion: salt-minion $(/opt/salt/bin/salt-minion --version | cut -d' ' -f2) started"
