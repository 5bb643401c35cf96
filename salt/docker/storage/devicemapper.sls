{#- Docker's direct-lvm recipe for devicemapper (Engine <= 24 only): a thin pool with its
    metadata LV on the Docker VG and an autoextend profile; daemon.json (config.sls) then
    points dm.thinpooldev at it. #}
{%- from tpldir.split("/")[0] ~ "/settings.jinja" import docker with context %}
{%- set storage = docker.storage %}
{%- set dm = storage.devicemapper %}
include:
  - .disk
{%- if docker.install.manage %}
  # The engine check needs the engine: also when docker.storage is applied alone.
  - ..install
{%- endif %}

# The engine is known only once it is installed: stop here, before the disk is touched.
docker-storage-driver-supported:
  docker_storage.storage_driver_supported:
    - name: devicemapper
{%- if docker.install.manage %}
    - require:
      - pkg: docker-packages
{%- endif %}
    - require_in:
      - docker_storage: docker-storage-disk

docker-storage-thinpool-profile:
  file.managed:
    - name: {{ ("/etc/lvm/profile/" ~ dm.profile ~ ".profile")|json }}
    - makedirs: True
    - contents: |
        activation {
          thin_pool_autoextend_threshold={{ dm.autoextend_threshold }}
          thin_pool_autoextend_percent={{ dm.autoextend_percent }}
        }
    - require:
      - docker_storage: docker-storage-vg

docker-storage-thinpool:
  docker_storage.thin_pool_present:
    - name: {{ dm.thinpool|json }}
    - vgname: {{ storage.volume_group|json }}
    - metadata: {{ dm.metadata|json }}
    - extents: {{ dm.thinpool_extents|json }}
    - metadata_extents: {{ dm.metadata_extents|json }}
    - profile: {{ dm.profile|json }}
    - require:
      - file: docker-storage-thinpool-profile
    - require_in:
      - test: docker-storage-ready
