"""
Containers, images and registry logins on the Docker SDK, for the docker formula's states
(salt/_states/docker_containers.py).

- ``client``: one ``docker.APIClient`` per run (``docker.url`` config, else ``DOCKER_HOST``).
- ``spec``: the desired container (Salt's own option translation, as
  ``docker_container.running`` has it) and its config hash, stored in a label at creation so
  that a no-op run needs one inspection per container and no temporary container.
- ``drift``: what differs between a container's inspection and its spec.
- ``replace``: create the new container beside the old one with the old one's anonymous volumes
  mounted at the same places (as Docker Compose does), swap them, roll back if it fails to
  start. Nothing here ever removes a volume.
- ``pull`` / ``login`` / ``stored_auth``: images pulled with the credentials of
  ``registry_config``; credentials checked against the registry before they are stored.

Nothing in this module logs option values: container environments hold secrets.
"""

import base64
import hashlib
import json
import os
import re
import tempfile
import time

import requests.exceptions
import salt.utils.args
import salt.utils.data
import salt.utils.dockermod
import salt.utils.dockermod.translate.container
from salt.exceptions import CommandExecutionError

try:
    import docker
    import docker.errors
    import docker.types
except ImportError:
    docker = None

__virtualname__ = "docker_containers"

# Label holding the hash of the configuration a container was created from.
HASH_LABEL = "docker-hosts.config-hash"
# Bump when the meaning of the hashed data changes: every container is then re-created once.
HASH_VERSION = 1
# Names a container goes through while it is replaced (pillar names must not end so); an
# interrupted run leaves at most these behind, and the next run finishes the job.
NEXT_SUFFIX = "..next"
PREVIOUS_SUFFIX = "..previous"
ANONYMOUS_VOLUME = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_URL = "unix://var/run/docker.sock"
DEFAULT_TIMEOUT = 60
# Keys of the network endpoint config accepted under networks: {name: [{key: value}]}.
ENDPOINT_KEYS = ("aliases", "links", "ipv4_address", "ipv6_address", "link_local_ips")
# HostConfig fields a run corrects when `docker update` changed them, and the docker update
# argument that sets each (None: only a re-create can).
UPDATABLE = {
    "BlkioWeight": "blkio_weight", "CpuPeriod": "cpu_period", "CpuQuota": "cpu_quota",
    "CpuRealtimePeriod": None, "CpuRealtimeRuntime": None, "CpuShares": "cpu_shares",
    "CpusetCpus": "cpuset_cpus", "CpusetMems": "cpuset_mems", "Memory": "mem_limit",
    "MemoryReservation": "mem_reservation", "MemorySwap": "memswap_limit", "NanoCpus": None,
    "PidsLimit": None,
}  # fmt: skip
# The Docker API version containers are checked for (Engine 20.10's), and the docker SDK's
# create_container arguments that are not part of the container's configuration.
CHECK_API_VERSION = "1.41"
CREATE_ONLY_ARGS = ("name", "platform", "use_config_proxy")
# Docker's answer when a published port is held (by another container, or by a stale endpoint).
PORT_TAKEN = "port is already allocated"


def __virtual__():
    # Loaded without the SDK too: the formula renders (registry_of) before it installs it.
    return __virtualname__


# --- client and cached lookups ----------------------------------------------------------------


def docker_url():
    """Where this minion's Docker listens: ``docker.url`` config, else ``DOCKER_HOST``."""
    url = __salt__["config.option"]("docker.url", None) or os.environ.get("DOCKER_HOST")
    return url or DEFAULT_URL


def client():
    """The run's docker API client (created once per run, kept in ``__context__``)."""
    if docker is None:
        raise CommandExecutionError(
            "the docker Python SDK is not installed on this minion: apply docker.install "
            "(docker:install:python_sdk) and run again"
        )
    if "docker_containers.client" not in __context__:
        __context__["docker_containers.client"] = docker.APIClient(
            base_url=docker_url(), version="auto", timeout=DEFAULT_TIMEOUT
        )
    return __context__["docker_containers.client"]


def _api_error(error):
    explanation = getattr(error, "explanation", None)
    if isinstance(explanation, bytes):
        explanation = explanation.decode(errors="replace")
    return " ".join(str(explanation or error).split())


def _causes(error):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def failure(error, what):
    """
    One line for the operator about ``error`` met while working on ``what`` (``container
    web``): what failed, on what, and what to do. Docker being away, Docker's own errors and
    anything unexpected alike: never a traceback or a raw exception's repr.
    """
    for cause in _causes(error):
        if isinstance(cause, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return (
                f"{what}: Docker is not reachable at {docker_url()} ({type(cause).__name__}): "
                "start Docker (systemctl start docker), then apply the state again"
            )
    if isinstance(error, CommandExecutionError):
        return " ".join(str(error).split())
    if docker is not None and isinstance(error, docker.errors.APIError):
        status = getattr(error, "status_code", None) or "no status"
        side = "Docker failed" if isinstance(status, int) and status >= 500 else "Docker refused"
        return (
            f"{what}: {side} ({status}): {_api_error(error)}; see the Docker daemon's log "
            "(journalctl -u docker), fix the cause and apply the state again"
        )
    return (
        f"{what}: unexpected {type(error).__name__}: {' '.join(str(error).split())} "
        "(the minion's log has the details): apply the state again, or report it"
    )


def leftover_names():
    """Names of containers an interrupted replacement left (one filtered listing per run:
    the daemon matches the names, so unmanaged containers cost next to nothing)."""
    if "docker_containers.leftovers" not in __context__:
        pattern = f"({re.escape(NEXT_SUFFIX)}|{re.escape(PREVIOUS_SUFFIX)})$"
        listing = client().containers(all=True, filters={"name": pattern})
        __context__["docker_containers.leftovers"] = {
            name.lstrip("/") for item in listing for name in item.get("Names") or []
        }
    return __context__["docker_containers.leftovers"]


def _forget_names():
    __context__.pop("docker_containers.leftovers", None)


def inspect_container(name):
    """``docker inspect`` of the container named exactly ``name``, or None when there is none.

    Docker resolves a name it does not know as an ID prefix (``c23`` -> ``c231839b…``): an
    answer for another name is no answer."""
    try:
        found = client().inspect_container(name)
    except docker.errors.NotFound:
        return None
    return found if found.get("Name") == f"/{name}" else None


def image_id(image):
    """Local image id of ``image`` (cached for the run), or None when it is not here."""
    ids = __context__.setdefault("docker_containers.image_ids", {})
    if image not in ids:
        try:
            ids[image] = client().inspect_image(image)["Id"]
        except docker.errors.NotFound:
            ids[image] = None
    return ids[image]


def forget_image(image):
    __context__.setdefault("docker_containers.image_ids", {}).pop(image, None)


# --- images and registries ------------------------------------------------------------------


def split_image(image):
    """``registry:5000/app:1`` -> ``("registry:5000/app", "1")``; digests stay in the name."""
    if "@" in image:
        return image, None
    repository, _, tag = image.rpartition(":")
    if not repository or "/" in tag:
        return image, "latest"
    return repository, tag


def registry_of(image):
    """Registry host an image reference pulls from (``docker.io`` for Docker Hub names)."""
    first, slash, _ = str(image).partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def image_states(images, containers):
    """``{image: options}`` for the image states: pillar ``images`` plus every container's
    image. An image's ``pull`` is its own, else the most eager of its containers' (``always``
    over ``missing`` over ``never``; a container without one says ``missing``)."""
    result = {image: dict(options or {}) for image, options in (images or {}).items()}
    wanted = {}
    for options in (containers or {}).values():
        policy = options.get("pull") or "missing"
        wanted.setdefault(options["image"], set()).add(policy)
    for image, policies in wanted.items():
        options = result.setdefault(image, {})
        if "pull" not in options:
            options["pull"] = next(p for p in ("always", "missing", "never") if p in policies)
    return result


def _load_auths(config_path):
    if not config_path or not os.path.exists(config_path):
        return {}
    with open(config_path, encoding="utf-8") as handle:
        return json.load(handle).get("auths") or {}


def stored_auth(registry, config_path):
    """``{"username", "password"}`` stored for ``registry`` in ``config_path``, or None."""
    entry = _load_auths(config_path).get(registry) or {}
    if not entry.get("auth"):
        return None
    username, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
    return {"username": username, "password": password}


def pull(image, config_path=None):
    """Pull ``image`` with the credentials stored for its registry; returns the new id."""
    repository, tag = split_image(image)
    auth = stored_auth(registry_of(image), config_path)
    try:
        for event in client().pull(repository, tag=tag, stream=True, decode=True, auth_config=auth):
            if event.get("error"):
                raise docker.errors.APIError(event["error"])
    except docker.errors.APIError as error:
        raise CommandExecutionError(
            f"pulling {image} failed: {_api_error(error)}: check the image's name and tag, "
            "that its registry answers and its login (docker:registries), then apply again"
        ) from None
    forget_image(image)
    return image_id(image)


def remote_digest(image, config_path=None):
    """Manifest digest the registry has for ``image`` now (no pull)."""
    auth = stored_auth(registry_of(image), config_path)
    try:
        return client().inspect_distribution(image, auth_config=auth)["Descriptor"]["digest"]
    except docker.errors.APIError as error:
        raise CommandExecutionError(
            f"asking the registry about {image} failed: {_api_error(error)}: check that its "
            "registry answers and its login (docker:registries), then apply again"
        ) from None


def local_digests(image):
    try:
        return client().inspect_image(image).get("RepoDigests") or []
    except docker.errors.NotFound:
        return []


def login(registry, username, password):
    """Check credentials against ``registry`` (dockerd's /auth); raise naming it if refused."""
    try:
        client().login(username, password=password, registry=registry, reauth=True)
    except docker.errors.APIError as error:
        raise CommandExecutionError(
            f"login to registry {registry} as {username!r} failed: {_api_error(error)}: check "
            "the user and password (docker_secrets) and that the registry answers"
        ) from None


def store_auth(registry, username, password, config_path):
    """Write the ``docker login`` entry for ``registry``: file 0600, a new directory 0700."""
    directory = os.path.dirname(config_path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    config = {}
    if os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    config.setdefault("auths", {})[registry] = {"auth": auth}
    handle, tmp = tempfile.mkstemp(dir=directory)
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        json.dump(config, out, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, config_path)


# --- networks and volumes -------------------------------------------------------------------

# What a network's inspection holds for each docker SDK create_network argument.
NETWORK_FIELDS = {
    "driver": "Driver", "options": "Options", "internal": "Internal", "labels": "Labels",
    "enable_ipv6": "EnableIPv6", "attachable": "Attachable", "scope": "Scope",
}  # fmt: skip
VOLUME_FIELDS = {"driver": "Driver", "driver_opts": "Options", "labels": "Labels"}


def network_args(options):
    """docker SDK ``create_network`` arguments from pillar options: ``ipam`` becomes the SDK's
    own ``IPAMConfig`` (``{driver, pool_configs: [{subnet, iprange, gateway, aux_addresses}],
    options}``)."""
    args = dict(options or {})
    if args.get("ipam") is not None:
        ipam = dict(args["ipam"])
        pools = [docker.types.IPAMPool(**pool) for pool in ipam.pop("pool_configs", None) or []]
        args["ipam"] = docker.types.IPAMConfig(pool_configs=pools, **ipam)
    return args


def find_network(name):
    """The inspection of the network named exactly ``name``, or None (Docker's name filter
    matches parts of names, and an inspection by name resolves ID prefixes)."""
    for listed in client().networks(names=[name]):
        if listed.get("Name") == name:
            return client().inspect_network(listed["Id"])
    return None


def find_volume(name):
    try:
        return client().inspect_volume(name)
    except docker.errors.NotFound:
        return None


def settings_drift(found, wanted, kind):
    """``{option: {"old", "new"}}``: where the inspection ``found`` of a network or volume
    (``kind``) differs from the options ``wanted``."""
    fields = NETWORK_FIELDS if kind == "network" else VOLUME_FIELDS
    drift_found = {}
    for option, value in wanted.items():
        have = found.get(fields[option]) if option in fields else None
        if option in fields and (have or None) != (value or None):
            drift_found[option] = {"old": have, "new": value}
    return drift_found


def create_network(name, options):
    return client().create_network(name, **network_args(options))["Id"]


def create_volume(name, options):
    return client().create_volume(name, **(options or {}))["Name"]


# --- the desired container ------------------------------------------------------------------


def parse_networks(networks):
    """``[net, {net: [{aliases: [...]}, ...]}]`` -> ``{net: endpoint config}`` (ordered)."""
    parsed = {}
    for item in salt.utils.args.split_input(networks or []):
        if isinstance(item, dict):
            for net, conf in item.items():
                repacked = (
                    conf if isinstance(conf, dict) else salt.utils.data.repack_dictlist(conf or [])
                )
                parsed[str(net)] = dict(repacked or {})
        else:
            parsed[str(item)] = {}
    for net, conf in parsed.items():
        unknown = sorted(set(conf) - set(ENDPOINT_KEYS))
        if unknown:
            known = ", ".join(ENDPOINT_KEYS)
            raise CommandExecutionError(f"networks:{net}: unknown endpoint keys {unknown}: {known}")
        for key in ("aliases", "links"):
            if key in conf:
                conf[key] = salt.utils.args.split_input(conf[key])
    return parsed


def translate(options):
    """``options`` as Salt's docker translator reads them (docker SDK argument names), with
    its checks on (the pillar check refuses the options that would turn them off)."""
    try:
        return salt.utils.dockermod.translate_input(
            salt.utils.dockermod.translate.container, **salt.utils.args.clean_kwargs(**options)
        )
    # Salt raises several kinds here; each names the offending option.
    except Exception as error:
        raise CommandExecutionError(f"invalid container options: {error}") from None


def _split_args(translated):
    accepted = salt.utils.dockermod.get_client_args(["create_container", "host_config"])
    create, host = {}, {}
    for key, value in translated.items():
        if key in accepted["host_config"]:
            host[key] = value
        elif key in accepted["create_container"]:
            create[key] = value
        else:
            raise CommandExecutionError(f"{key}: not a container option of this docker SDK")
    return create, host


def config_hash(image, options, networks, start):
    """Hash of everything the pillar says about a container (secrets resolved)."""
    data = {
        "version": HASH_VERSION,
        "image": image,
        "options": options,
        "networks": networks,
        "start": bool(start),
    }
    text = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def spec(image, options, *, networks=None, start=True, api=None):
    """
    The desired container: ``{"image", "create", "host", "networks", "start", "hash"}``
    (``create``/``host``: docker SDK ``create_container``/``create_host_config`` arguments),
    built with ``api`` (default: the run's client).
    """
    parsed = parse_networks(networks)
    translated = translate(options)
    create, host = _split_args(translated)
    labels = dict(create.get("labels") or {})
    digest = config_hash(image, options, parsed, start)
    labels[HASH_LABEL] = digest
    create["labels"] = labels
    if parsed and "network_mode" not in host:
        host["network_mode"] = next(iter(parsed))
    return {
        "image": image,
        "create": create,
        "host": host,
        "host_config": (api or client()).create_host_config(**host),
        "networks": parsed,
        "start": bool(start),
        "hash": digest,
    }


def dry_run(image, options, networks=None):
    """
    What the container state and the docker SDK make of ``options``, with no Docker daemon:
    ``spec`` (Salt's translation, the SDK's HostConfig) and the SDK's ContainerConfig and
    endpoint configs, for API 1.41 (Engine 20.10, the oldest the formula supports: newer
    engines take everything it does). Raises what they raise. Without the SDK (a fresh node's
    first render), only Salt's translation: the state builds the rest before it changes that
    container.
    """
    if docker is None:
        translate(options)
        return {"networks": parse_networks(networks)}
    api = docker.APIClient(base_url=DEFAULT_URL, version=CHECK_API_VERSION)
    desired = spec(image, options, networks=networks, api=api)
    create = {k: v for k, v in desired["create"].items() if k not in CREATE_ONLY_ARGS}
    command = create.pop("command", None)
    api.create_container_config(image, command, host_config=desired["host_config"], **create)
    for endpoint in desired["networks"].values():
        api.create_endpoint_config(**endpoint)
    return desired


def option_names():
    """Every container option name Salt's translator and the docker SDK know (to suggest the
    nearest one for a misspelt key)."""
    module = salt.utils.dockermod.translate.container
    names = [
        name
        for name, item in vars(module).items()
        if callable(item) and getattr(item, "__module__", None) == module.__name__
    ]
    names += list(getattr(module, "ALIASES", {}))
    if docker is not None:
        accepted = salt.utils.dockermod.get_client_args(["create_container", "host_config"])
        names += accepted["create_container"] + accepted["host_config"]
    return sorted({name for name in names if not name.startswith("_")})


# --- drift ----------------------------------------------------------------------------------


def _policy(value):
    value = value or {}
    name = value.get("Name") or "no"
    count = value.get("MaximumRetryCount") or 0 if name == "on-failure" else 0
    return f"{name}:{count}" if count else name


def _resource_drift(actual, desired):
    drift = {}
    for key in UPDATABLE:
        want = desired.get(key) or None
        if key == "MemorySwap" and want is None and desired.get("Memory"):
            want = 2 * desired["Memory"]  # Docker's default: swap = twice the memory limit
        have = actual.get(key) or None
        if have != want:
            drift[key] = {"old": have, "new": want}
    return drift


def drift(container, desired, current_image_id):
    """
    ``{"recreate": {...}, "update": {...}, "start": bool}``: what makes ``container``
    (an inspection) differ from ``desired`` (``spec``), from that one inspection.
    """
    recreate = {}
    labels = container["Config"].get("Labels") or {}
    if labels.get(HASH_LABEL) != desired["hash"]:
        recreate["config"] = {"old": labels.get(HASH_LABEL), "new": desired["hash"]}
    if current_image_id and container["Image"] != current_image_id:
        recreate["image"] = {"old": container["Image"], "new": current_image_id}
    if desired["networks"]:
        have = sorted(container["NetworkSettings"].get("Networks") or {})
        if have != sorted(desired["networks"]):
            recreate["networks"] = {"old": have, "new": sorted(desired["networks"])}
    host = container["HostConfig"]
    update = _resource_drift(host, desired["host_config"])
    want_policy = _policy(desired["host_config"].get("RestartPolicy"))
    if _policy(host.get("RestartPolicy")) != want_policy:
        update["RestartPolicy"] = {"old": _policy(host.get("RestartPolicy")), "new": want_policy}
    state = container["State"]
    start = desired["start"] and not (state.get("Running") and not state.get("Paused"))
    return {"recreate": recreate, "update": update, "start": start}


def update_args(update, desired):
    """``docker update`` arguments fixing ``update`` drift, or None when only a re-create can
    (Docker takes 0 as "unchanged", so a limit cannot be lifted in place)."""
    args = {}
    for key, change in update.items():
        if key == "RestartPolicy":
            args["restart_policy"] = desired["host_config"].get("RestartPolicy") or {"Name": "no"}
        elif UPDATABLE.get(key) and change["new"]:
            args[UPDATABLE[key]] = change["new"]
        else:
            return None
    return args


# --- create, replace, recover ---------------------------------------------------------------


def _volumes_from_destinations(desired):
    found = set()
    for source in desired["host"].get("volumes_from") or []:
        holder = inspect_container(source.split(":")[0])
        found.update(mount["Destination"] for mount in (holder or {}).get("Mounts") or [])
    return found


def _explicit_destinations(desired):
    taken = {}
    for bind in desired["host"].get("binds") or []:
        parts = str(bind).split(":")
        if len(parts) >= 2:
            taken[parts[1]] = parts[0]
    for mount in desired["host"].get("mounts") or []:
        target = mount.get("Target") if isinstance(mount, dict) else None
        if target:
            taken[target] = mount.get("Source") or "a mount"
    for target in desired["host"].get("tmpfs") or {}:
        taken[target] = "tmpfs"
    return taken


def carried_volumes(name, old, desired):
    """
    Binds that mount ``old``'s anonymous volumes at the same places in the new container.
    Raises when the new configuration puts something else where such a volume is mounted:
    re-creating would detach the container from its data.
    """
    if not old:
        return []
    shared = _volumes_from_destinations(desired)
    taken = _explicit_destinations(desired)
    carried = []
    for mount in old.get("Mounts") or []:
        volume, where = mount.get("Name") or "", mount["Destination"]
        if mount.get("Type") != "volume" or not ANONYMOUS_VOLUME.match(volume) or where in shared:
            continue
        if where in taken:
            raise CommandExecutionError(
                f"re-creating {name} would detach it from anonymous volume {volume} at {where}"
                f" (the new configuration mounts {taken[where]} there). Copy the data first, "
                f"e.g. docker run --rm -v {volume}:/from -v {taken[where]}:/to <image> cp -a "
                f"/from/. /to/, then remove the container by hand (docker rm -f {name}: its "
                "volumes stay) and converge again"
            )
        carried.append(f"{volume}:{where}:{'rw' if mount.get('RW', True) else 'ro'}")
    return carried


def _create(name, desired, carried):
    api = client()
    host = dict(desired["host"])
    if carried:
        host["binds"] = list(host.get("binds") or []) + carried
    networks = desired["networks"]
    networking = None
    if networks and host.get("network_mode") in networks:
        mode = host["network_mode"]
        networking = api.create_networking_config(
            {mode: api.create_endpoint_config(**networks[mode])}
        )
    created = api.create_container(
        desired["image"],
        name=name,
        host_config=api.create_host_config(**host),
        networking_config=networking,
        **desired["create"],
    )
    for net, conf in networks.items():
        if net != host.get("network_mode"):
            api.connect_container_to_network(created["Id"], net, **conf)
    _forget_names()
    return created["Id"]


def _remove_leftover(name):
    try:
        client().remove_container(name, v=False, force=True)
    except docker.errors.NotFound:
        pass
    _forget_names()


def recover(name):
    """
    Finish what an interrupted ``replace`` of ``name`` left: a new container not yet swapped
    in is removed (never started; its volumes stay), an old one renamed aside is put back
    when ``name`` is missing, else removed (its volumes are mounted by ``name``).
    Returns what was done, for the state's changes.
    """
    names = leftover_names()
    done = {}
    if name + NEXT_SUFFIX in names:
        _remove_leftover(name + NEXT_SUFFIX)
        done["removed"] = name + NEXT_SUFFIX
    if name + PREVIOUS_SUFFIX in names:
        if inspect_container(name) is not None:
            _remove_leftover(name + PREVIOUS_SUFFIX)
            done["removed_previous"] = name + PREVIOUS_SUFFIX
        else:
            client().rename(name + PREVIOUS_SUFFIX, name)
            _forget_names()
            done["restored"] = name
    return done


def start_container(container_id, name, desired):
    """
    Start container ``name``. "port is already allocated" for a host port that no container
    publishes is dockerd's own leak: killed while a container joined its network, dockerd
    restores that endpoint's port allocation when it starts again and never releases it
    (Engine 20.10; tests/states/containers/test_dockerd_crash.py). Only a restart of Docker
    frees it: done here when the formula manages the Docker service (``desired`` names it in
    ``docker_service``; the containers that ran are started again, and the run's context
    notes it for the state), else the error says to do it.
    """
    try:
        client().start(container_id)
        return
    except docker.errors.APIError as error:
        message = _start_error(name, desired, error)
        taken = re.search(r"Bind for (\S+):(\d+) failed: " + PORT_TAKEN, message)
        if not taken or _publishers(taken.group(2), container_id):
            raise CommandExecutionError(message) from None
    where = f"{taken.group(1)}:{taken.group(2)}"
    docker_service = desired.get("docker_service")
    if not docker_service:
        raise CommandExecutionError(
            f"container {name} failed to start: Docker holds {where} for no container (left by "
            "a crash of dockerd): restart Docker (systemctl restart docker), then apply again"
        )
    restart_docker(docker_service)
    _start(container_id, name, desired)
    __context__["docker_containers.docker_restarted"] = (
        f"{docker_service} restarted: it held {where} for no container since a crash"
    )


def _start(container_id, name, desired):
    try:
        client().start(container_id)
    except docker.errors.APIError as error:
        raise CommandExecutionError(_start_error(name, desired, error)) from None


def _publishers(port, container_id):
    """Names of the other containers that publish host port ``port``."""
    listed = client().containers(filters={"publish": port})
    return [item["Names"][0].lstrip("/") for item in listed if item["Id"] != container_id]


def restart_docker(service):
    """Restart the Docker service, wait for it, start again the containers that ran."""
    running = [item["Id"] for item in client().containers()]
    if not __salt__["service.restart"](service):
        raise CommandExecutionError(f"restarting {service} failed: see journalctl -u {service}")
    deadline = time.monotonic() + DEFAULT_TIMEOUT
    while True:
        try:
            client().ping()
            break
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    for container_id in running:
        client().start(container_id)


def _start_error(name, desired, error):
    message = f"container {name} failed to start: {_api_error(error)}"
    log_config = desired["host_config"].get("LogConfig") or {}
    if log_config.get("Type") == "awslogs":
        opts = log_config.get("Config") or {}
        message += (
            f" (awslogs: log group {opts.get('awslogs-group')!r} in region "
            f"{opts.get('awslogs-region')!r}: the group must exist or awslogs-create-group be "
            '"true", and the node\'s instance profile must allow logs:CreateLogStream and '
            "logs:PutLogEvents on it)"
        )
    return message


def _rollback(name, new_id, old, was_running):
    api = client()
    api.rename(new_id, name + NEXT_SUFFIX)
    api.remove_container(new_id, v=False, force=True)
    if old:
        api.rename(old["Id"], name)
        if was_running:
            api.start(old["Id"])
    _forget_names()


def create(name, desired):
    """Create (and start, unless ``start`` is false) container ``name``; returns its id."""
    new_id = _create(name, desired, [])
    if desired["start"]:
        try:
            start_container(new_id, name, desired)
        except CommandExecutionError:
            client().remove_container(new_id, v=False, force=True)
            _forget_names()
            raise
    return new_id


def replace(name, old, desired, shutdown_timeout=10):
    """
    Replace container ``old`` by a new one from ``desired``, keeping its anonymous volumes;
    on a failed start the old container is put back as it was. Returns the new id.
    """
    carried = carried_volumes(name, old, desired)
    api = client()
    new_id = _create(name + NEXT_SUFFIX, desired, carried)
    was_running = old["State"].get("Running")
    api.stop(old["Id"], timeout=shutdown_timeout)
    api.rename(old["Id"], name + PREVIOUS_SUFFIX)
    api.rename(new_id, name)
    _forget_names()
    if desired["start"]:
        try:
            start_container(new_id, name, desired)
        except CommandExecutionError:
            _rollback(name, new_id, old, was_running)
            raise
    api.remove_container(old["Id"], v=False)
    _forget_names()
    return new_id


# --- health ---------------------------------------------------------------------------------


def _health_problem(found):
    """What is wrong with an inspected container that should run, "starting" while its
    health check has not decided yet, or None."""
    if found is None:
        return "missing"
    state = found.get("State") or {}
    if not state.get("Running"):
        return f"not running ({state.get('Status')}, exit code {state.get('ExitCode')})"
    health = (state.get("Health") or {}).get("Status")
    return None if health in (None, "healthy") else health


def unhealthy(wait=300):
    """
    The pillar's containers that should run (``start`` not false) and do not, or whose health
    check does not say healthy within ``wait`` seconds: ``{name: what is wrong}``, ``{}`` when
    all are well. What ``salt-run node.replace`` checks on a new node before it destroys the
    old one.

    CLI Example: ``salt db2 docker_containers.unhealthy wait=60``
    """
    containers = (__pillar__.get("docker") or {}).get("containers") or {}
    wanted = [name for name, spec in containers.items() if (spec or {}).get("start") is not False]
    deadline = time.monotonic() + float(wait)
    while True:
        problems = {name: _health_problem(inspect_container(name)) for name in wanted}
        problems = {name: problem for name, problem in problems.items() if problem}
        if not problems or time.monotonic() > deadline:
            return problems
        time.sleep(2)
