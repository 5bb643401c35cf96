# The dataserver class: PostgreSQL with its data in a data-only container (the recipe's
# dataserver role). Credentials come from the encrypted pillar (secrets/dataserver.sls).
docker:
  containers:
    pg_data:
      # Data-only: created (it runs `true` once) and never restarted; holds the volume.
      image: busybox:latest
      command: ["true"]
      start: false
      volumes:
        - /var/lib/postgresql
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
      log_driver: awslogs
      log_opt:
        awslogs-region: cn-north-1
        awslogs-group: dataserver
        awslogs-stream: postgres
