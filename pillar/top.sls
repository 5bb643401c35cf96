{#- Pillar by node class, never by a grain. The class is the master's node record for the
    authenticated minion id it compiles this pillar for (salt/_utils/dockerhosts_nodes.py),
    while the key it was recorded for is the accepted one: set by salt-cloud when it creates
    a node, or by `salt-run node_class.set <id> <class>`. Grains, pillar given on the command
    line and pillarenv/saltenv cannot change it. A minion without a class gets nothing here.

    A class is a folder, classes/<class>/ (docs/lifecycle.md): its init.sls holds or includes
    everything the class's nodes get, its secrets (secrets.sls, #!yaml|gpg) included, which
    thus go to no other class. Adding a class is that folder and a salt-cloud profile. #}
{%- set node_class = salt["node_record.class_of"](opts.id) %}
base:
  '*': {{ (["docker", "classes." ~ node_class] if node_class else [])|json }}
