# Docker host: packages, storage on the extra disk, daemon.json, service, containers.
# Storage comes before the service so /var/lib/docker is on its volume before Docker starts.
include:
  - .install
  - .storage
  - .containerd
  - .config
  - .service
  - .containers
{#- swarm: only for a class whose pillar has swarm: (docker/swarm checks it, runs if enabled) #}
{%- if pillar.get("swarm") %}
  - .swarm
{%- endif %}
