{#- When the Docker volume has grown (EBS ModifyVolume; `salt-cloud -a grow_docker_volume`), grow
    the storage on it online: PV, then the overlay2 LV and its filesystem, or the devicemapper
    thin pool. Containers keep running. A no-op when nothing grew; a shrunk disk fails. #}
{%- from tpldir.split("/")[0] ~ "/settings.jinja" import docker with context %}
{%- set storage = docker.storage %}
{%- if storage.mode == "overlay2" %}
{%-   set lv, extents = storage.overlay2.logical_volume, storage.overlay2.extents %}
{%- else %}
{%-   set lv, extents = storage.devicemapper.thinpool, storage.devicemapper.thinpool_extents %}
{%- endif %}

docker-storage-grown:
  docker_storage.grown:
    - name: {{ storage.volume_group|json }}
    - logical_volume: {{ lv|json }}
    - device: {{ storage.docker_volume|json }}
    - mode: {{ storage.mode|json }}
    - extents: {{ extents|json }}
    - require:
      - test: docker-storage-ready
