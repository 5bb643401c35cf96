{#- A minion key was accepted, rejected or deleted (salt/key). The event only names the
    minion: node.on_key forgets its record (class included) and takes it out of its swarm when
    the record is for a key that is no longer the accepted one; the master's pki_dir decides,
    not the event's `act`, as a minion can fire this tag too. #}
forget-node-whose-key-went:
  runner.node.on_key:
    - args:
        - name: {{ data.get("id")|json }}
