{#- Swarm, the cluster's part: applied on one manager by the swarm runner (swarm.converge),
    which passes pillar swarm_run: the class (from the master's node records) and the nodes
    (minion id to swarm node id). Nodes, then networks/secrets/configs, then services, then
    pruning. #}
{%- from tpldir ~ "/settings.jinja" import swarm with context %}
{%- set run = pillar.get("swarm_run", {}) %}
{%- set class_name = run.get("class") %}
{%- if not swarm.enabled or not class_name or pillar.get("node_class") != class_name %}

docker-swarm-cluster:
  test.fail_without_changes:
    - name: "docker.swarm.cluster runs from the swarm runner on a manager of the class, whose swarm is enabled"
{%- else %}
{%-   for minion, node_id in run.get("nodes", {}).items() %}

docker-swarm-node-{{ minion }}:
  docker_swarm.node_present:
    - name: {{ minion|json }}
    - node_id: {{ node_id|json }}
    - class_name: {{ class_name|json }}
    - swarm: {{ swarm|json }}
{%-   endfor %}
{%-   for name, network in swarm.networks.items() %}

docker-swarm-network-{{ name }}:
  docker_swarm.network_present:
    - name: {{ name|json }}
    - network: {{ network|json }}
    - class_name: {{ class_name|json }}
{%-   endfor %}
{%-   for name, value in swarm.secrets.items() %}

docker-swarm-secret-{{ name }}:
  docker_swarm.secret_present:
    - name: {{ name|json }}
    - value: {{ value|json }}
    - class_name: {{ class_name|json }}
{%-   endfor %}
{%-   for name, config in swarm.configs.items() %}

docker-swarm-config-{{ name }}:
  docker_swarm.config_present:
    - name: {{ name|json }}
    - data: {{ config.data|json }}
    - class_name: {{ class_name|json }}
{%-   endfor %}
{%-   for name, service in swarm.services.items() %}
{%-     set needs = [] %}
{%-     for ref in service.networks %}{% do needs.append("docker-swarm-network-" ~ ref.name) %}{% endfor %}
{%-     for ref in service.secrets %}{% do needs.append("docker-swarm-secret-" ~ ref.source) %}{% endfor %}
{%-     for ref in service.configs %}{% do needs.append("docker-swarm-config-" ~ ref.source) %}{% endfor %}

docker-swarm-service-{{ name }}:
  docker_swarm.service_present:
    - name: {{ name|json }}
    - class_name: {{ class_name|json }}
    - swarm: {{ swarm|json }}
{%-     if needs %}
    - require:
{%-       for id in needs|unique %}
      - docker_swarm: {{ id }}
{%-       endfor %}
{%-     endif %}
{%-   endfor %}

docker-swarm-services-unlisted:
  docker_swarm.services_pruned:
    - name: {{ class_name|json }}
    - keep: {{ swarm.services.keys()|list|json }}
    - policy: {{ swarm.unlisted_services|json }}

docker-swarm-versions-unused:
  docker_swarm.versions_pruned:
    - name: {{ class_name|json }}
    - secrets: {{ swarm.secrets.keys()|list|json }}
    - configs: {{ swarm.configs.keys()|list|json }}
    - require:
{%-   for name in swarm.services %}
      - docker_swarm: docker-swarm-service-{{ name }}
{%-   endfor %}
      - docker_swarm: docker-swarm-services-unlisted
{%- endif %}
