{#- Swarm, the node's own part (included by docker/init.sls when the class's pillar has a
    swarm: block): pillar swarm: is checked at render time (settings.jinja), so a typo stops the
    highstate before any change. Membership is decided on the master, which alone hands out
    join tokens: `salt-run swarm.converge <class>`, `salt-run swarm.admit <node>` (docs/swarm.md). #}
{%- from tpldir ~ "/settings.jinja" import swarm with context %}

docker-swarm-settings:
  test.succeed_without_changes:
    - name: "pillar swarm: checked (swarm {{ 'enabled' if swarm.enabled else 'disabled' }}); membership: salt-run swarm.admit"
