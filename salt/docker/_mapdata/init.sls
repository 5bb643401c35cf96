{#- The merged settings of the docker formula on this node, as template-formula's _mapdata
    shows them: `salt <node> state.apply docker._mapdata` (changes nothing). This is
    map.jinja's merge before the check, so it also shows a pillar the check refuses.
    Secrets appear only as their {secret: name} references. #}
{%- from tpldir.split("/")[0] ~ "/map.jinja" import mapdata with context %}

docker-mapdata:
  test.show_notification:
    - text: {{ ({"values": mapdata}|yaml(False))|json }}
