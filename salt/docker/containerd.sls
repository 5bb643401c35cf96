{#- With the containerd image store on (docker:config:features:containerd-snapshotter: true),
    images and layers live in containerd's root, /var/lib/containerd, not in Docker's
    data-root: bind-mount a directory of the Docker volume there (what containerd already
    holds moved in first, once), so they stay on the Docker disk. Off (the default): nothing. #}
{%- from tpldir ~ "/settings.jinja" import docker with context %}
{%- set snapshotter = (docker.config.get("features") or {}).get("containerd-snapshotter") %}
{%- set storage = docker.storage %}
{%- if snapshotter is sameas true and storage.mode == "devicemapper" %}

docker-containerd-root:
  test.fail_without_changes:
    - name: >-
        docker:config:features:containerd-snapshotter needs overlay2 storage
        (docker:storage:mode is devicemapper)
{%- elif snapshotter is sameas true and storage.mode == "overlay2" %}
{%-   set root = storage.overlay2.mountpoint ~ "/containerd-root" %}
include:
  - .storage
  - .service

docker-containerd-root:
  file.directory:
    - name: {{ root|json }}
    - mode: "0711"
    - require:
      - test: docker-storage-ready

docker-containerd-root-moved:
  docker_storage.moved_into:
    - name: /var/lib/containerd
    - target: {{ root|json }}
    - require:
      - file: docker-containerd-root

docker-containerd-root-mounted:
  mount.mounted:
    - name: /var/lib/containerd
    - device: {{ root|json }}
    - fstype: none
    # At boot, after the Docker volume is mounted.
    - opts: bind,x-systemd.requires-mounts-for={{ storage.overlay2.mountpoint }}
    - hidden_opts:
      - x-systemd.requires-mounts-for={{ storage.overlay2.mountpoint }}
    - mkmnt: True
    - persist: True
    - require:
      - docker_storage: docker-containerd-root-moved

docker-containerd-service:
  service.running:
    - name: containerd
    - watch:
      - mount: docker-containerd-root-mounted
    - require_in:
      - service: docker-service
{%- endif %}
