{#- overlay2 on an LV of its own: PV + VG on the disk, one LV, XFS (ftype=1, which overlay2
    needs) or ext4, mounted at /var/lib/docker (and in fstab) before Docker starts. #}
{%- from tpldir.split("/")[0] ~ "/map.jinja" import docker with context %}
{%- set storage = docker.storage %}
{%- set overlay = storage.overlay2 %}
{%- set lv_device = "/dev/" ~ storage.volume_group ~ "/" ~ overlay.logical_volume %}

docker-storage-packages:
  pkg.installed:
    - pkgs: {{ docker.storage_pkgs|json }}

docker-storage-pv:
  lvm.pv_present:
    - name: {{ storage.device }}
    - require:
      - pkg: docker-storage-packages

docker-storage-vg:
  lvm.vg_present:
    - name: {{ storage.volume_group }}
    - devices: {{ storage.device }}
    - require:
      - lvm: docker-storage-pv

docker-storage-lv:
  cmd.run:
    - name: lvcreate --yes --wipesignatures y -n {{ overlay.logical_volume }} -l {{ overlay.extents }} {{ storage.volume_group }}
    - unless: lvs {{ storage.volume_group }}/{{ overlay.logical_volume }}
    - require:
      - lvm: docker-storage-vg

docker-storage-filesystem:
  cmd.run:
{%- if overlay.filesystem == "xfs" %}
    - name: mkfs.xfs -n ftype=1 {{ lv_device }}
{%- else %}
    - name: mkfs.ext4 {{ lv_device }}
{%- endif %}
    # Only a blank LV: never reformat one that already holds a filesystem.
    - unless: blkid -p {{ lv_device }}
    - require:
      - cmd: docker-storage-lv

docker-storage-data-root-moved:
  docker_host.data_root_moved:
    - name: {{ overlay.mountpoint }}
    - device: {{ lv_device }}
    - fstype: {{ overlay.filesystem }}
    - require:
      - cmd: docker-storage-filesystem

docker-storage-mounted:
  mount.mounted:
    - name: {{ overlay.mountpoint }}
    - device: {{ lv_device }}
    - fstype: {{ overlay.filesystem }}
    - opts: {{ overlay.mount_options[overlay.filesystem]|join(",")|json }}
    # XFS reports pquota as prjquota once mounted: not a reason to remount.
    - extra_mount_translate_options:
        pquota: prjquota
    - mkmnt: True
    - persist: True
    - require:
      - docker_host: docker-storage-data-root-moved
    - require_in:
      - test: docker-storage-ready
