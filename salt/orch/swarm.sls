{#- One class's swarm, in order: managers first, then workers, then what runs on it.
      salt-run state.orchestrate orch.swarm pillar='{"class": "backends"}' [test=True]
    Which nodes belong to the class, who may join and who manages come from the master
    (salt/_runners/swarm.py), never from the nodes. docs/swarm.md. #}
{%- set class_name = pillar.get("class") %}
{%- if class_name is not string or not class_name %}

swarm-class-missing:
  test.fail_without_changes:
    - name: 'pass the class: pillar={"class": "<class>"}'
{%- else %}

swarm-managers:
  swarm_orch.managers:
    - name: {{ class_name|json }}

swarm-workers:
  swarm_orch.workers:
    - name: {{ class_name|json }}
    - require:
      - swarm_orch: swarm-managers

# After the workers step whatever its result (a node that failed to join must not keep the
# services from converging on the others), but only once the managers are there.
swarm-cluster:
  swarm_orch.cluster:
    - name: {{ class_name|json }}
    - order: last
    - require:
      - swarm_orch: swarm-managers
{%- endif %}
