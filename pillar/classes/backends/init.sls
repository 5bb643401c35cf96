# The backends class: the stateless application tier, any number of interchangeable nodes
# (`salt-run state.orchestrate orch.ensure_class pillar='{class: backends, count: 3}'`). Each
# node runs the web front end below; a class that runs as a swarm describes its services under
# `swarm:` instead (docs/swarm.md, pillar.example). Secrets of the class would go into
# secrets.sls next to this file (#!yaml|gpg, bin/encrypt-secret) and `include: [.secrets]`.
docker:
  containers:
    web:
      image: nginx:1.27-alpine
      port_bindings:
        - "80:80"
      restart_policy: always
      # Stop at once on SIGQUIT (nginx's graceful stop), not after Docker's 10 s.
      stop_signal: SIGQUIT
      stop_timeout: 15
