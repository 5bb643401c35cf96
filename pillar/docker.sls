# Every node with a class. Only what differs from salt/docker/defaults.yaml belongs under
# `docker:` here (every key and its default: pillar.example); the defaults suit every class.

# Salt's docker modules push `docker.ps verbose` (container env, i.e. secrets) to the mine
# after every container change unless this is off.
docker.update_mine: false
