{#- Docker storage on the extra disk, by docker:storage:mode (none, overlay2, devicemapper).
    docker_host.validate (map.jinja) has already resolved the disk and refused one that holds
    a filesystem, a partition table or another volume group. #}
{%- from tpldir.split("/")[0] ~ "/map.jinja" import docker with context %}
{%- if docker.storage.mode != "none" %}
include:
  - .{{ docker.storage.mode }}
  - .grow
{%- endif %}

# The service requires this: Docker starts only once its storage is in place.
docker-storage-ready:
  test.nop: []
