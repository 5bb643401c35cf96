# Highstate by the `class` grain set at provisioning (salt/_clouds). Every Docker host gets
# the whole docker formula (install, storage, config, service, containers); which containers
# run is decided by the pillar of its class (pillar/top.sls).
base:
  'class:*':
    - match: grain
    - docker
