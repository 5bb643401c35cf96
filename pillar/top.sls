# Pillar by the `class` grain set at provisioning. Secrets (docker_secrets) go only to the
# classes that use them: another class's minion never receives them.
base:
  'class:*':
    - match: grain
    - docker
  'class:dataserver':
    - match: grain
    - dataserver
    - secrets.dataserver
