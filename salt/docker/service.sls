{%- from tpldir ~ "/settings.jinja" import docker with context %}
include:
  - .config
  - .storage
{%- if docker.install.manage %}
  - .install
{%- endif %}

{%- if docker.service.manage %}

docker-service:
  service.running:
    - name: {{ docker.service.name }}
    - enable: True
    # Restarted only when daemon.json changes.
    - watch:
      - file: docker-config
    - require:
      - test: docker-storage-ready
{%-   if docker.install.manage %}
      - pkg: docker-packages
{%-   endif %}
{%- else %}

# docker:service:manage is off (Docker runs under something else): nothing to start, but
# what needs Docker still waits for its storage and daemon.json.
docker-service:
  test.nop:
    - require:
      - test: docker-storage-ready
      - file: docker-config
{%- endif %}
