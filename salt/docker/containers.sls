{#- Generic containers from pillar: registry logins, images, networks, volumes, containers
    (any docker_container.running option) and containers to remove. Secret references
    ({secret: name}) stay unresolved here; docker_host states resolve them at run time. #}
{%- from tpldir ~ "/map.jinja" import docker with context %}
{%- set tplroot = tpldir.split("/")[0] %}
include:
  - .service

{%- for url, login in docker.registries.items() %}

docker-registry-{{ url }}:
  docker_host.registry_login:
    - name: {{ url|json }}
    - username: {{ login.username|json }}
    - password: {{ login.password|json }}
    - config_path: {{ docker.registry_config|json }}
{%- endfor %}

{%- set images = {} %}
{%- for image, options in docker.images.items() %}
{%-   do images.update({image: options or {}}) %}
{%- endfor %}
{%- for name, options in docker.containers.items() %}
{%-   if options.image not in images %}
{%-     do images.update({options.image: {}}) %}
{%-   endif %}
{%- endfor %}
{%- for image, options in images.items() %}

docker-image-{{ image }}:
  docker_image.present:
    - name: {{ image|json }}
{%-   for key, value in options.items() %}
    - {{ key }}: {{ value|json }}
{%-   endfor %}
    - require:
      - sls: {{ tplroot }}.service
{%-   for url in docker.registries %}
      - docker_host: docker-registry-{{ url }}
{%-   endfor %}
{%- endfor %}

{%- for name, options in docker.networks.items() %}

docker-network-{{ name }}:
  docker_network.present:
    - name: {{ name|json }}
{%-   for key, value in (options or {}).items() %}
    - {{ key }}: {{ value|json }}
{%-   endfor %}
    - require:
      - sls: {{ tplroot }}.service
{%- endfor %}

{%- for name, options in docker.volumes.items() %}

docker-volume-{{ name }}:
  docker_volume.present:
    - name: {{ name|json }}
{%-   for key, value in (options or {}).items() %}
    - {{ key }}: {{ value|json }}
{%-   endfor %}
    - require:
      - sls: {{ tplroot }}.service
{%- endfor %}

{%- for name, options in docker.containers.items() %}
{%-   set networks = options.get("networks") or [] %}
{%-   set volumes_from = options.get("volumes_from") or [] %}
{%-   set volumes_from = [volumes_from] if volumes_from is string else volumes_from %}

docker-container-{{ name }}:
  docker_host.container_running:
    - name: {{ name|json }}
{%-   for key, value in options.items() %}
    - {{ key }}: {{ value|json }}
{%-   endfor %}
    - require:
      - docker_image: docker-image-{{ options.image }}
{%-   for network in networks %}
{%-     set network = network if network is string else (network.keys()|first) %}
{%-     if network in docker.networks %}
      - docker_network: docker-network-{{ network }}
{%-     endif %}
{%-   endfor %}
{%-   for source in volumes_from %}
{%-     set source = source.split(":")[0] %}
{%-     if source in docker.containers %}
      - docker_host: docker-container-{{ source }}
{%-     endif %}
{%-   endfor %}
{%-   for volume in docker.volumes %}
      - docker_volume: docker-volume-{{ volume }}
{%-   endfor %}
{%- endfor %}

{%- for name in docker.absent %}

docker-container-absent-{{ name }}:
  docker_container.absent:
    - name: {{ name|json }}
    - force: True
    - require:
      - sls: {{ tplroot }}.service
{%- endfor %}
