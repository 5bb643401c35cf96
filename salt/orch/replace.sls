{#- Every live node of a class replaced by a new one, oldest first, `batch` at a time:

      salt-run state.orchestrate orch.replace pillar='{class: dataserver, batch: 2}'

    Pillar: class (required); batch (nodes replaced at the same time, default 1); profile (the
    salt-cloud profile of the new nodes, e.g. one with a new image; default: each node's own);
    wait (seconds a new node's containers have to run healthy, default 300).
    node.replace_plan names the nodes and their replacements before anything changes; each
    node.replace runs in its own process (parallel), and a group starts only when every node
    of the one before it was replaced: the first failure stops the run, its node serving as
    before (docs/lifecycle.md). #}
{%- set request = {"node_class": pillar.get("class")|string, "batch": pillar.get("batch", 1)} %}
{%- set plan = salt["saltutil.runner"]("node.replace_plan", kwarg=request) %}
{%- if plan is not mapping or "groups" not in plan %}
{#- The runner refused the request: stop here, nothing was changed. #}
replace-request-refused:
  test.fail_without_changes:
    - name: {{ (plan.comment if plan is mapping else plan)|string|json }}
{%- else %}
{%-   set options = {"profile": pillar.get("profile"), "wait": pillar.get("wait", 300)} %}
{%-   for group in plan.groups %}
{%-     set before = plan.groups[loop.index0 - 1] if not loop.first else [] %}
{%-     for node in group %}

replace-{{ node.name }}:
  salt.runner:
    - name: node.replace
    - arg: [{{ node.name|json }}]
    - kwarg: {{ dict(options, new=node.new)|json }}
    - parallel: True
{%-       if before %}
    - require:
{%-         for previous in before %}
      - salt: replace-{{ previous.name }}
{%-         endfor %}
{%-       endif %}
{%-     endfor %}
{%-   endfor %}

{{ plan["class"] }}-replaced:
  test.succeed_without_changes:
    - name: {{ plan["groups"]|sum(start=[])|map(attribute="name")|join(", ") or "no live nodes" }}
{%-   if plan.groups %}
    - require:
{%-     for group in plan.groups %}
{%-       for node in group %}
      - salt: replace-{{ node.name }}
{%-       endfor %}
{%-     endfor %}
{%-   endif %}
{%- endif %}
