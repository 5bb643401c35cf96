{#- Docker storage on the extra disk, by docker:storage:mode (none, overlay2, devicemapper).
    The disk is found and checked when the states run (docker_storage.disk_checked), not
    while rendering: `state.show_sls docker` renders on a machine without it. #}
{%- from tpldir.split("/")[0] ~ "/settings.jinja" import docker with context %}
{%- if docker.storage.mode != "none" %}
include:
  - .{{ docker.storage.mode }}
{%- endif %}

# The service requires this: Docker starts only once its storage is in place.
docker-storage-ready:
  test.nop: []
