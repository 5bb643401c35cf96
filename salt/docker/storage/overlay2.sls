{#- overlay2 on an LV of its own: one LV on the Docker VG, XFS (ftype=1, which overlay2
    needs) or ext4, mounted at Docker's data root (and in fstab) before Docker starts. #}
{%- from tpldir.split("/")[0] ~ "/settings.jinja" import docker with context %}
{%- set storage = docker.storage %}
{%- set overlay = storage.overlay2 %}
{%- set lv_device = "/dev/" ~ storage.volume_group ~ "/" ~ overlay.logical_volume %}
include:
  - .disk

docker-storage-lv:
  lvm.lv_present:
    - name: {{ overlay.logical_volume|json }}
    - vgname: {{ storage.volume_group|json }}
    - extents: {{ overlay.extents|json }}
    - require:
      - docker_storage: docker-storage-vg

# Only a blank LV is formatted; one holding another filesystem is refused, never reformatted.
docker-storage-filesystem:
  docker_storage.filesystem_present:
    - name: {{ lv_device|json }}
    - fstype: {{ overlay.filesystem|json }}
    - require:
      - lvm: docker-storage-lv

docker-storage-data-root-moved:
  docker_host.data_root_moved:
    - name: {{ overlay.mountpoint|json }}
    - device: {{ lv_device|json }}
    - fstype: {{ overlay.filesystem|json }}
    - require:
      - docker_storage: docker-storage-filesystem

docker-storage-mounted:
  mount.mounted:
    - name: {{ overlay.mountpoint|json }}
    - device: {{ lv_device|json }}
    - fstype: {{ overlay.filesystem|json }}
    - opts: defaults
    - mkmnt: True
    - persist: True
    - require:
      - docker_host: docker-storage-data-root-moved
    - require_in:
      - test: docker-storage-ready
