{#- Registry logins, images, networks, volumes and containers from pillar (docs/containers.md).
    Secret references ({secret: name}) stay unresolved here; the docker_containers states
    resolve them at run time. A container requires its image, which requires the login of
    its registry: refused credentials leave the containers of that registry untouched. #}
{%- from tpldir ~ "/settings.jinja" import docker with context %}
{%- set tplroot = tpldir.split("/")[0] %}
include:
  - .service

{%- for url, login in docker.registries.items() %}

docker-registry-{{ url }}:
  docker_containers.registry_login:
    - name: {{ url|json }}
    - username: {{ login.username|json }}
    - password: {{ login.password|json }}
    - config_path: {{ docker.registry_config|json }}
    - require:
      - sls: {{ tplroot }}.service
{%- endfor %}

{#- Every image: pillar docker:images plus the containers' images, each with its pull policy
    (its own, else the most eager of its containers'): docker_containers.image_states. #}
{%- set images = salt["docker_containers.image_states"](docker.images, docker.containers) %}
{%- for image, options in images.items() %}
{%-   set registry = salt["docker_containers.registry_of"](image) %}

docker-image-{{ image }}:
  docker_containers.image_present:
    - name: {{ image|json }}
{%-   for key, value in options.items() %}
    - {{ key }}: {{ value|json }}
{%-   endfor %}
{%-   if "load" not in options and "build" not in options and "sls" not in options %}
    - registry_config: {{ docker.registry_config|json }}
{%-   endif %}
    - require:
      - sls: {{ tplroot }}.service
{%-   if registry in docker.registries %}
      - docker_containers: docker-registry-{{ registry }}
{%-   endif %}
{%- endfor %}

{%- for name, options in docker.networks.items() %}

docker-network-{{ name }}:
  docker_containers.network_present:
    - name: {{ name|json }}
{%-   for key, value in (options or {}).items() %}
    - {{ key }}: {{ value|json }}
{%-   endfor %}
    - require:
      - sls: {{ tplroot }}.service
{%- endfor %}

{%- for name, options in docker.volumes.items() %}

docker-volume-{{ name }}:
  docker_containers.volume_present:
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
  docker_containers.running:
    - name: {{ name|json }}
{%-   for key, value in options.items() %}
    - {{ key }}: {{ value|json }}
{%-   endfor %}
    - registry_config: {{ docker.registry_config|json }}
    - docker_service: {{ (docker.service.name if docker.service.manage else none)|json }}
    - require:
      - docker_containers: docker-image-{{ options.image }}
{%-   for network in networks %}
{%-     set network = network if network is string else (network.keys()|first) %}
{%-     if network in docker.networks %}
      - docker_containers: docker-network-{{ network }}
{%-     endif %}
{%-   endfor %}
{%-   for source in volumes_from %}
{%-     set source = source.split(":")[0] %}
{%-     if source in docker.containers %}
      - docker_containers: docker-container-{{ source }}
{%-     endif %}
{%-   endfor %}
{%-   for volume in docker.volumes %}
      - docker_containers: docker-volume-{{ volume }}
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
