{#- salt-cloud created a node: apply its highstate. node.on_created checks the event and the
    node (accepted key, a class in the registry) and converges it in a process of its own. #}
converge-created-node:
  runner.node.on_created:
    - args:
        - tag: {{ tag|json }}
        - data: {{ data|json }}
