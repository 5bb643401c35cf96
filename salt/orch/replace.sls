{#- Every live node of a class replaced by a new one, one at a time, oldest first:

      salt-run state.orchestrate orch.replace pillar='{class: dataserver}'

    Pillar: class (required); profile (the salt-cloud profile of the new nodes, e.g. one with
    a new image; default: each node's own); wait (seconds the new node's containers have to
    run healthy, default 300). node.replace_class (salt/_runners/node.py) does the work and
    stops at the first node it could not replace, which keeps serving (docs/lifecycle.md). #}
replace-class:
  salt.runner:
    - name: node.replace_class
    - node_class: {{ pillar.get("class")|string|json }}
    - profile: {{ pillar.get("profile")|json }}
    - wait: {{ pillar.get("wait", 300)|json }}
