# The dataserver class: PostgreSQL with its database on the named volume `pgdata` (a named
# volume outlives every container that mounts it; docs/containers.md). `pg_data` is the
# recipe's data-only container, kept for `volumes_from` users: it holds the named volume, so
# re-creating it never detaches the data. Credentials come from the class's encrypted pillar
# (secrets.sls, next to this file: ciphertext only).
include:
  - .secrets

docker:
  volumes:
    pgdata:
      driver: local
  containers:
    pg_data:
      # Data-only: created, never started.
      image: busybox:latest
      command: ["true"]
      start: false
      binds:
        - pgdata:/var/lib/postgresql
    postgres:
      image: postgres:16
      volumes_from:
        - pg_data
      environment:
        POSTGRES_USER: {secret: postgres_user}
        POSTGRES_PASSWORD: {secret: postgres_password}
        POSTGRES_DB: {secret: postgres_db}
        PGDATA: /var/lib/postgresql/data
      port_bindings:
        - "5432:5432"
      # Docker refuses a retry count with `always` (the recipe's restart_retries: 10 never
      # worked): use on-failure:N for a bounded number of restarts.
      restart_policy: always
      # CloudWatch Logs: dockerd creates the group if missing (log option values are
      # strings). The node's instance profile needs the class's policy: iam/ and
      # docs/containers.md.
      log_driver: awslogs
      log_opt:
        awslogs-region: cn-north-1
        awslogs-group: dataserver
        awslogs-stream: postgres
        awslogs-create-group: "true"
