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

# What Docker wrote there before (the package starts it) moves onto the volume; a volume that
# already holds a data root (moved here from another node) keeps it, the local one is kept aside.
docker-storage-data-root-moved:
  docker_storage.moved_into:
    - name: {{ overlay.mountpoint|json }}
    - device: {{ lv_device|json }}
    - fstype: {{ overlay.filesystem|json }}
    - services: [docker.socket, docker]
    - require:
      - docker_storage: docker-storage-filesystem

docker-storage-mounted:
  mount.mounted:
    - name: {{ overlay.mountpoint|json }}
    - device: {{ lv_device|json }}
    - fstype: {{ overlay.filesystem|json }}
    - opts: {{ overlay.mount_options[overlay.filesystem]|join(",")|json }}
    # XFS reports pquota as prjquota once mounted: not a reason to remount.
    - extra_mount_translate_options:
        pquota: prjquota
    - mkmnt: True
    - persist: True
    - require:
      - docker_storage: docker-storage-data-root-moved
    - require_in:
      - test: docker-storage-ready
