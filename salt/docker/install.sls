{%- from tpldir ~ "/settings.jinja" import docker with context %}
{%- set install = docker.install %}
{%- set repo = install.repo %}

{%- if install.manage %}
{%-   if install.source == "docker" and grains.os_family == "Debian" %}
docker-repo-key:
  file.managed:
    - name: {{ repo.key_file }}
    - source: {{ repo.key_url }}
    - skip_verify: True
    - makedirs: True
    - mode: "0644"

docker-repo:
  pkgrepo.managed:
    - name: deb [signed-by={{ repo.key_file }}] {{ repo.url }} {{ grains.oscodename }} stable
    - file: {{ repo.file }}
    - require:
      - file: docker-repo-key
    - require_in:
      - pkg: docker-packages
{%-   elif install.source == "docker" and grains.os_family == "RedHat" %}
docker-repo:
  pkgrepo.managed:
    - name: {{ repo.name }}
    - humanname: {{ repo.humanname }}
    - baseurl: {{ repo.baseurl }}
    - gpgcheck: 1
    - gpgkey: {{ repo.gpgkey }}
    - require_in:
      - pkg: docker-packages
{%-   endif %}

docker-packages:
  pkg.installed:
    - pkgs: {{ install.pkgs[install.source]|json }}
{%- endif %}

{%- set sdk = salt["docker_host.python_sdk"]() %}
{%- if install.python_sdk and not sdk.usable %}

# Salt's docker modules need the docker SDK in the minion's own Python: salt-pip on onedir
# installs, the minion's environment for a pip-installed Salt.
docker-python-sdk:
  pip.installed:
    - name: {{ install.python_sdk_requirement|json }}
    - bin_env: {{ sdk.bin_env }}
    - reload_modules: True
{%- endif %}
