{#- salt-cloud created a node. The tag only names it: node.on_created converges it (in a
    process of its own) when its node record says this master's salt-cloud deployed it with
    the key accepted now; a forged event, in any form, is refused and logged. #}
converge-created-node:
  runner.node.on_created:
    - args:
        - tag: {{ tag|json }}
        - data: {{ data|json }}
