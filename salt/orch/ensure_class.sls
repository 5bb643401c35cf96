{#- A class with exactly `count` live nodes:

      salt-run state.orchestrate orch.ensure_class pillar='{class: backends, count: 3}'

    Pillar: class and count (required); profile (the salt-cloud profile for new nodes, default
    the class), prefix (new names are <prefix>-<n>, default the class), remove_extra (default
    false: extra nodes are only reported). node.ensure_plan (salt/_runners/node.py) checks the
    request (every unknown key, a profile of another class are refused) and asks EC2 which
    nodes of the class are live, before anything changes; the new nodes are created in
    parallel and converged (joining the converge the reactor started). A second run changes
    nothing. #}
{#- The request: the pillar's plain top-level values (so a misspelt key reaches the check;
    nothing nested, such as secrets, is passed on). #}
{%- set request = {} %}
{%- for key, value in pillar.items() %}
{%-   if value is not none and (value is string or value is not iterable) %}
{%-     do request.update({key: value}) %}
{%-   endif %}
{%- endfor %}
{%- set plan = salt["saltutil.runner"]("node.ensure_plan", kwarg={"request": request}) %}
{%- if plan is not mapping or "create" not in plan %}
{#- The runner refused the request: stop here, nothing was changed. #}
ensure-class-request-refused:
  test.fail_without_changes:
    - name: {{ (plan.comment if plan is mapping else plan)|string|json }}
{%- else %}

{%-   for name in plan.create %}

create-{{ name }}:
  cloud.profile:
    - name: {{ name|json }}
    - profile: {{ plan.profile|json }}
    - parallel: True
{%-   endfor %}
{%-   if plan.create %}

converge-new-nodes:
  salt.runner:
    - name: node.converge_nodes
    - nodes: {{ plan.create|json }}
    - require:
{%-     for name in plan.create %}
      - cloud: create-{{ name }}
{%-     endfor %}
{%-   endif %}

{%-   for name in plan.extra if plan.remove_extra %}

remove-{{ name }}:
  cloud.absent:
    - name: {{ name|json }}
    - parallel: True
{%-   endfor %}

{{ plan["class"] }}-size:
  test.configurable_test_state:
    - changes: False
    - result: True
    - comment: >-
        {{ plan["class"] }}: {{ plan.live|length }} live, {{ plan.count }} wanted;
        created: {{ plan.create|join(", ") or "none" }};
        extra: {{ plan.extra|join(", ") or "none" }}
        ({{ "removed" if plan.remove_extra else "kept: pass remove_extra: true to remove them" }})
{%- endif %}
