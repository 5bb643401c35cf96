{#- salt-cloud destroyed a node: forget its key, cached data, converge record and class once
    it is really gone (node.forget refuses while its key is accepted and EC2 still has it). #}
forget-destroyed-node:
  runner.node.on_destroyed:
    - args:
        - tag: {{ tag|json }}
        - data: {{ data|json }}
