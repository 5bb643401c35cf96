{#- The Docker disk, shared by both storage modes: LVM tools first (so our own volume group
    can be recognised), then the fail-closed check of the disk (the gate every other storage
    state requires), then the PV and VG on it (marked as ours), all with argument lists. #}
{%- from tpldir.split("/")[0] ~ "/settings.jinja" import docker with context %}
{%- set storage = docker.storage %}

{%- if docker.storage_pkgs %}

docker-storage-packages:
  pkg.installed:
    - pkgs: {{ docker.storage_pkgs|json }}
{%- else %}

# docker:storage_pkgs is empty: the LVM tools are someone else's to install.
docker-storage-packages:
  test.nop: []
{%- endif %}

# Refuses anything but a blank whole disk, or one that already is (or half is) our VG.
docker-storage-disk:
  docker_storage.disk_checked:
    - name: {{ storage.volume_group|json }}
    - device: {{ storage.docker_volume|json }}
    - require:
      - docker-storage-packages

docker-storage-vg:
  docker_storage.volume_group_present:
    - name: {{ storage.volume_group|json }}
    - device: {{ storage.docker_volume|json }}
    - require:
      - docker_storage: docker-storage-disk
