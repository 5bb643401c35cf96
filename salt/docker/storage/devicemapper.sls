{#- Docker's direct-lvm recipe for devicemapper (Engine <= 24 only): PV + VG on the disk,
    thin pool + metadata LVs, lvconvert to a thin pool, an autoextend profile; daemon.json
    (config.sls) then points dm.thinpooldev at it. #}
{%- from tpldir.split("/")[0] ~ "/map.jinja" import docker with context %}
{%- set storage = docker.storage %}
{%- set dm = storage.devicemapper %}
{%- set vg = storage.volume_group %}
{%- set is_thin_pool = "lvs --noheadings -o lv_attr " ~ vg ~ "/" ~ dm.thinpool ~ " | grep -q '^ *t'" %}

docker-storage-packages:
  pkg.installed:
    - pkgs: {{ docker.storage_pkgs|json }}

# The engine is known only once it is installed: stop here, before the disk is touched.
docker-storage-driver-supported:
  docker_host.storage_driver_supported:
    - name: devicemapper
{%- if docker.install.manage %}
    - require:
      - pkg: docker-packages
{%- endif %}

docker-storage-pv:
  lvm.pv_present:
    - name: {{ storage.device }}
    - require:
      - pkg: docker-storage-packages
      - docker_host: docker-storage-driver-supported

docker-storage-vg:
  lvm.vg_present:
    - name: {{ vg }}
    - devices: {{ storage.device }}
    - require:
      - lvm: docker-storage-pv

docker-storage-thinpool-lv:
  cmd.run:
    - name: lvcreate --yes --wipesignatures y -n {{ dm.thinpool }} {{ vg }} -l {{ dm.thinpool_extents }}
    - unless: lvs {{ vg }}/{{ dm.thinpool }}
    - require:
      - lvm: docker-storage-vg

docker-storage-metadata-lv:
  cmd.run:
    - name: lvcreate --yes --wipesignatures y -n {{ dm.metadata }} {{ vg }} -l {{ dm.metadata_extents }}
    # After lvconvert the metadata LV lives on hidden inside the pool.
    - unless: lvs {{ vg }}/{{ dm.metadata }} || {{ is_thin_pool }}
    - require:
      - cmd: docker-storage-thinpool-lv

docker-storage-thinpool:
  cmd.run:
    - name: lvconvert -y --zero n -c 512K --thinpool {{ vg }}/{{ dm.thinpool }} --poolmetadata {{ vg }}/{{ dm.metadata }}
    - unless: {{ is_thin_pool }}
    - require:
      - cmd: docker-storage-metadata-lv

docker-storage-thinpool-profile:
  file.managed:
    - name: /etc/lvm/profile/{{ dm.profile }}.profile
    - makedirs: True
    - contents: |
        activation {
          thin_pool_autoextend_threshold={{ dm.autoextend_threshold }}
          thin_pool_autoextend_percent={{ dm.autoextend_percent }}
        }

docker-storage-thinpool-profile-applied:
  cmd.run:
    - name: lvchange --metadataprofile {{ dm.profile }} {{ vg }}/{{ dm.thinpool }}
    - unless: lvs --noheadings -o lv_profile {{ vg }}/{{ dm.thinpool }} | grep -qw {{ dm.profile }}
    - require:
      - cmd: docker-storage-thinpool
      - file: docker-storage-thinpool-profile
    - require_in:
      - test: docker-storage-ready
