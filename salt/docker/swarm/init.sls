{#- Swarm, the node's own part (included by docker/init.sls when the class's pillar has
    a swarm: block): the pillar is checked at render time and the engine must be able to be in
    a swarm. Joining is decided on the master, which alone may hand out join tokens:
    `salt-run swarm.converge <class>`, `swarm.admit <node>` (docs/swarm.md). #}
{%- from tpldir ~ "/settings.jinja" import swarm with context %}
{%- if swarm.enabled %}
include:
  - docker.service

docker-swarm-engine-ready:
  docker_swarm.engine_ready:
    - name: {{ grains.id|json }}
    - require:
      - sls: docker.service
{%- endif %}
