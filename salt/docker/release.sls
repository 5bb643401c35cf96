{#- Before the Docker volume leaves this node for another (salt-run node.replace; not part of
    the highstate): Docker stopped, so its containers stop cleanly (a database shuts down),
    then every filesystem on the volume unmounted and its volume group deactivated. The
    node's next boot (or highstate) brings all of it back. #}
{%- from tpldir ~ "/settings.jinja" import docker with context %}
{%- if docker.service.manage %}

docker-release-service:
  service.dead:
    - names:
      - docker.socket
      - {{ docker.service.name }}
      - containerd
{%- endif %}
{%- if docker.storage.mode != "none" %}

docker-release-volume:
  module.run:
    - docker_storage.release:
      - volume_group: {{ docker.storage.volume_group|json }}
      - device: {{ docker.storage.docker_volume|json }}
{%-   if docker.service.manage %}
    - require:
      - service: docker-release-service
{%-   endif %}
{%- endif %}

# What node.replace waits for: everything above done.
docker-released:
  test.nop: []
