# Docker host: packages, storage on the extra disk, daemon.json, service, containers.
# Storage comes before the service so /var/lib/docker is on its volume before Docker starts.
include:
  - .install
  - .storage
  - .containerd
  - .config
  - .service
  - .containers
