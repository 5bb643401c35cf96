{#- daemon.json from pillar docker:config plus the storage mode's settings
    (docker_host.daemon_json). Changing it restarts Docker (service.sls watches it). #}
{%- from tpldir ~ "/settings.jinja" import docker with context %}
include:
  - .storage

docker-config:
  file.serialize:
    - name: {{ docker.config_file }}
    - dataset: {{ salt["docker_host.daemon_json"](docker)|json }}
    - serializer: json
    - serializer_opts:
      - indent: 2
      - sort_keys: True
    - makedirs: True
    - mode: "0644"
    # Written only once the storage it names exists: a refused or failed storage step
    # (e.g. devicemapper on Engine >= 25) leaves the running Docker's config alone.
    - require:
      - test: docker-storage-ready
