# Every Docker host (see pillar.example for every key of `docker:`).
docker:
  storage:
    # LVM on the extra EBS disk from the docker_disk grain; overlay2 for current engines.
    mode: overlay2
    volume_group: docker_vol
  config:
    log-driver: json-file
    log-opts:
      max-size: 10m
      max-file: "3"

# Salt's docker modules push `docker.ps verbose` (container env, i.e. secrets) to the mine
# after every container change unless this is off.
docker.update_mine: false
