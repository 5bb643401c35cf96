{#- Pillar by node class, never by a grain. The class is the master's registry entry for the
    authenticated minion id the master renders this top for (opts.id): the file
    <pki_dir>/node_classes/<minion id>, set by salt-cloud when it creates a node, or by
    `salt-run node_class.set <id> <class>`. Grains, pillar given on the command line and
    pillarenv/saltenv cannot change it. A minion without a class gets nothing from here. #}
{%- set entry = opts.pki_dir ~ "/node_classes/" ~ opts.id %}
{%- set node_class = salt["file.read"](entry).strip() if salt["file.file_exists"](entry) else None %}
{#- The pillar files of each class; the secrets of one class go to no other. #}
{%- set classes = {
      "dataserver": ["dataserver", "secrets.dataserver"],
    } %}
{%- set files = (["docker"] + classes.get(node_class, [])) if node_class else [] %}
base:
  '*': {{ files|json }}
