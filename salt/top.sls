{#- The docker formula for every node that has a class (pillar node_class, which the master
    sets from its registry: pillar/top.sls, salt/_pillar/node_class.py). Which containers
    run, and with which secrets, is decided by the pillar of that class. #}
{%- set states = ["docker"] if salt["pillar.get"]("node_class") else [] %}
base:
  '*': {{ states|json }}
