"""
The docker formula's pillar check, before anything changes.

map.jinja merges defaults.yaml < osfamilymap/osmap/osfingermap.yaml < pillar ``docker:``
(pure data); settings.jinja hands the result and the formula's schema (salt/docker/
schema.yaml) to ``check_for_state_run``. Every SLS of the formula imports settings.jinja, so a
bad pillar fails rendering and the highstate stops before any state runs. Every problem is
reported at once, each with its full key path and, for an unknown key, the nearest known one:
``docker:containers:postgres:volumes_form: unknown key (did you mean volumes_from?)``.

Each value is checked by what consumes it:

- the formula's own keys, and Docker's rules the docker SDK does not check (restart policies,
  log options per log driver, environment names ...): the schema, a data file, through the
  checker kit (salt/_utils/dockerhosts_checks.py);
- container options: the calls that will run them (``docker_containers.dry_run``: Salt's
  translation and the docker SDK's argument builders, with no Docker daemon), one option at a
  time so that an error names its key, then all together;
- networks: the SDK's own IPAM types and Python's ``ipaddress``;
- daemon.json: the node's own dockerd (``dockerd --validate``, Engine >= 23) when it has one,
  else the schema's list of dockerd's keys (Engine 20.10 .. 27).

Integers in Docker's string maps (labels, log options, environment ...) become strings; any
other value the consumer would read differently from what the pillar says is refused.
"""

import hashlib
import ipaddress
import json
import os
import re
import subprocess
import tempfile

import salt.utils.path
from salt.exceptions import CommandExecutionError

__virtualname__ = "docker_settings"

TOP_LEVEL_SIMILARITY = 0.75  # how close to a known top-level key a typo must be to be refused
# Where a {secret: name} is resolved (a registry host may hold a colon: host:port).
SECRET_PLACES = re.compile(r"docker:containers:[^:]+:environment:.+|docker:registries:.+:password")
STRING_MAPS = (
    *("labels", "log_opt", "sysctls", "storage_opt", "environment"),  # containers
    *("options", "driver_opts"),  # networks, volumes
)
VALIDATE_SINCE = 23  # dockerd --validate
# A daemon.json key the schema's list lacks (the node's dockerd decides when it can).
DAEMON_JSON_KEY = re.compile(r"docker:config:[^:]+: unknown key")


def __virtual__():
    return __virtualname__


def _kit(name):
    return __utils__[f"dockerhosts_checks.{name}"]


# --- loader entry points -----------------------------------------------------------------


def checked(settings, schema):
    """The merged ``docker`` settings, checked and normalised; raises naming every bad key.
    Kept in ``__context__`` by content: the same settings are checked once per job."""
    digest = _digest(settings, schema, __pillar__.get("docker_secrets"))
    cache = __context__.setdefault("docker_settings.checked", {})
    if digest not in cache:
        cache[digest] = validate(settings, schema, __pillar__)
    return cache[digest]


def check_for_state_run(formula, settings, schema):
    """``checked``, kept for the rest of this state run under ``formula`` (the formula's top
    directory; see ``state_run_settings``). settings.jinja calls it in the first SLS."""
    result = checked(settings, schema)
    run = _state_run()
    if run is not None:
        __context__[STATE_RUN_KEY] = (run, {**_kept_for_this_run(), formula: result})
    return result


def state_run_settings(formula):
    """
    The settings ``check_for_state_run`` returned for ``formula`` earlier in this state run,
    or None: settings.jinja asks this first, so a highstate fetches and merges map.jinja's
    files once, not once per SLS (every fetch is a round trip to the master).
    """
    return _kept_for_this_run().get(formula)


# A state run's modules get a context of their own: salt.state.State takes a copy of the
# caller's __context__ and puts the run's own file client in it. That file client names the
# run, so settings kept by one run are never seen by another, even on a minion that runs jobs
# in threads and shares one module context between them. The entry is only ever replaced,
# never changed in place, because a copied context shares its values with the original.
STATE_RUN_KEY = "docker_settings.state_run"


def _state_run():
    return __context__.get("fileclient")


def _kept_for_this_run():
    """{formula: settings} kept by this state run; empty outside a run or for another's entry."""
    run = _state_run()
    entry = __context__.get(STATE_RUN_KEY)
    if run is None or entry is None or entry[0] is not run:
        return {}
    return entry[1]


def _digest(*values):
    text = json.dumps(values, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


# --- the check -----------------------------------------------------------------------------


def validate(settings, schema, pillar=None):
    """Check ``settings`` (the merged ``docker:`` map) and return them normalised; ``pillar``
    gives ``docker_secrets`` and the pillar's top-level keys."""
    pillar = pillar if pillar is not None else {}
    problems = _top_level(pillar, schema)
    for key in ("docker_secrets", "node_class"):
        if key in pillar:
            problems += _kit("validate")(pillar[key], schema["properties"][key], key, schema)
    problems += _kit("validate")(settings, schema["$defs"]["docker"], "docker", schema)
    if _dockerd_that_validates():  # it knows its own keys better than the schema's list
        problems = [p for p in problems if not DAEMON_JSON_KEY.match(p)]
    problems += _misplaced_secrets(settings) + _names(settings)
    if isinstance(settings, dict):
        problems += _containers_by_consumer(settings, schema, problems)
    if not problems:  # the checks below assume the shapes the schema gave
        problems += _secret_names(settings, pillar.get("docker_secrets") or {})
        for check in CROSS_CHECKS:
            problems += check(settings, schema)
    if problems:
        raise CommandExecutionError(_kit("refusal")(problems))
    return _normalised(settings)


def _top_level(pillar, schema):
    """A top-level pillar key that is a near miss of a known one (``swarn``, ``dokcer``)."""
    known = list(schema["properties"])
    problems = []
    for key in pillar:
        if isinstance(key, str) and key not in known and not key.startswith("docker."):
            hint = _kit("suggestion")(key, known, TOP_LEVEL_SIMILARITY)
            if hint:
                problems.append(f"pillar:{key}: unknown key{hint}")
    return problems


def _misplaced_secrets(settings):
    found = __utils__["dockerhosts_secrets.ref_paths"](settings, "docker")
    return [
        f"{path}: a {{secret: name}} is not resolved here (only in containers:<name>:"
        "environment values and registries:<host>:password)"
        for path in found
        if not SECRET_PLACES.fullmatch(path)
    ]


def _secret_names(settings, secrets):
    """Each {secret: name} (in the places it may be) names a secret of docker_secrets."""
    places = [
        (f"docker:registries:{host}:password", login.get("password"))
        for host, login in settings.get("registries", {}).items()
    ]
    for name, options in settings.get("containers", {}).items():
        environment = options.get("environment")
        if isinstance(environment, dict):
            path = f"docker:containers:{name}:environment"
            places += [(f"{path}:{key}", value) for key, value in environment.items()]
    problems = []
    for path, value in places:
        if __utils__["dockerhosts_secrets.is_ref"](value) and value["secret"] not in secrets:
            problems.append(
                f"{path}: refers to secret {value['secret']!r}, which is not in pillar "
                "docker_secrets"
                + _kit("suggestion")(value["secret"], secrets)
                + " (is the encrypted pillar for this class in the pillar top?)"
            )
    return problems


def _names(settings):
    """Container, network and volume names, by the rule of dockerhosts_names."""
    if not isinstance(settings, dict):
        return []
    absent = settings.get("absent") if isinstance(settings.get("absent"), list) else []
    named = [(f"docker:absent:{index}", name) for index, name in enumerate(absent)]
    for section in ("containers", "networks", "volumes"):
        named += [(f"docker:{section}:{name}", name) for name in _mapped(settings, section)]
    problems = []
    for path, name in named:
        problem = __utils__["dockerhosts_names.docker_name_problem"](name)
        problems += [f"{path}: {problem}"] if problem else []
    return problems


def _mapped(settings, section):
    return settings[section] if isinstance(settings.get(section), dict) else {}


# --- normalised values ---------------------------------------------------------------------


def _strings(value):
    """Docker's string maps: integers become strings (YAML read them as numbers)."""
    if isinstance(value, dict):
        return {k: str(v) if type(v) is int else v for k, v in value.items()}
    return value


def _normalised(settings):
    result = dict(settings)
    for section in ("containers", "networks", "volumes"):
        result[section] = {
            name: {k: _strings(v) if k in STRING_MAPS else v for k, v in (options or {}).items()}
            for name, options in settings.get(section, {}).items()
        }
    config = dict(settings.get("config") or {})
    if "log-opts" in config:
        config["log-opts"] = _strings(config["log-opts"])
    result["config"] = config
    return result


# --- what only the sections together can say -----------------------------------------------


def _packages_for_source(settings, schema):
    install = settings.get("install", {})
    source = install.get("source")
    if install.get("manage") and not install.get("pkgs", {}).get(source):
        return [f"docker:install:source: {source!r} has no packages for this OS"]
    return []


def _absent_not_managed(settings, schema):
    both = sorted(set(settings.get("absent", [])) & set(settings.get("containers", {})))
    return [
        f"docker:absent:{name}: is also in docker:containers: which one is it?" for name in both
    ]


def _storage_owns_its_keys(settings, schema):
    if settings.get("storage", {}).get("mode", "none") == "none":
        return []
    return [
        f"docker:config:{key}: is set by docker:storage:mode; remove it here"
        for key in ("storage-driver", "storage-opts")
        if key in settings.get("config", {})
    ]


def _mountpoint_is_data_root(settings, schema):
    storage = settings.get("storage", {})
    data_root = settings.get("config", {}).get("data-root", "/var/lib/docker")
    mount = storage.get("overlay2", {}).get("mountpoint")
    if storage.get("mode") == "overlay2" and mount != data_root:
        return [
            f"docker:storage:overlay2:mountpoint: {mount!r} is not Docker's data root "
            f"{data_root!r} (docker:config:data-root): Docker would not use the volume"
        ]
    return []


def _image_store_fits_storage(settings, schema):
    features = settings.get("config", {}).get("features") or {}
    if features.get("containerd-snapshotter") is True and (
        settings.get("storage", {}).get("mode") == "devicemapper"
    ):
        return [
            "docker:config:features:containerd-snapshotter: true needs docker:storage:mode "
            "overlay2 (the containerd image store does not use Docker's devicemapper thin pool)"
        ]
    return []


def _names_fit_lvm(settings, schema):
    storage = settings.get("storage", {})
    vg = storage.get("volume_group", "")
    names = [storage.get("overlay2", {}).get("logical_volume", "")]
    names += [storage.get("devicemapper", {}).get(k, "") for k in ("thinpool", "metadata")]
    return [
        f"docker:storage:volume_group: {vg}/{name} is longer than LVM allows"
        for name in names
        if len(vg) + len(name) > 126
    ]


def _log_options(settings, schema):
    """Log options by log driver (schema ``x-log-opts``): dockerd refuses another option at
    create and a value it cannot parse when it starts the container."""
    config = settings.get("config", {})
    default_driver = config.get("log-driver", "json-file")
    places = [("docker:config:log-opts", default_driver, config.get("log-opts"))]
    for name, options in settings.get("containers", {}).items():
        driver = options.get("log_driver") or default_driver
        places.append((f"docker:containers:{name}:log_opt", driver, options.get("log_opt")))
    problems = []
    for path, driver, options in places:
        if isinstance(options, dict):
            problems += _log_options_of(path, driver, options, schema["x-log-opts"])
    return problems


def _log_options_of(path, driver, options, rules):
    allowed = {**rules["_all"], **rules.get(driver, {})}
    problems = []
    for key, value in options.items():
        if key not in allowed:
            problems.append(
                f"{path}:{key}: not a log option of the {driver} log driver"
                + _kit("suggestion")(key, allowed)
            )
        elif not re.search(allowed[key], str(value)):
            problems.append(f"{path}:{key}: {str(value)[:80]!r} is not a value {driver} takes")
    return problems


def _volumes_from_itself(settings, schema):
    problems = []
    for name, options in settings.get("containers", {}).items():
        for index, source in enumerate(options.get("volumes_from") or []):
            if source.split(":")[0] == name:
                problems.append(f"docker:containers:{name}:volumes_from:{index}: is itself")
    return problems


def _containers_by_consumer(settings, schema, known):
    """Each container's options through the code that runs them (``docker_containers``:
    Salt's translation, ``dry_run``): each option alone (the error names its key; ``known``
    problems are not repeated), then all of them together."""
    problems = []
    for name, options in _mapped(settings, "containers").items():
        if isinstance(options, dict):
            problems += _container_by_consumer(f"docker:containers:{name}", options, schema, known)
    return problems


# The container state's own arguments, not Docker options.
OWN_OPTIONS = ("image", "pull", "start", "force", "shutdown_timeout", "networks")


def _container_by_consumer(path, options, schema, known):
    image = options.get("image") if isinstance(options.get("image"), str) else "busybox"
    docker_options = {k: _placeholders(v) for k, v in options.items() if k not in OWN_OPTIONS}
    problems = []
    for key, value in docker_options.items():
        where = f"{path}:{key}"
        if not any(p.startswith(f"{where}:") for p in known):
            problems += _option_by_consumer(where, image, key, value, schema)
    if problems or any(p.startswith(f"{path}:") for p in known):
        return problems
    try:
        desired = __salt__["docker_containers.dry_run"](
            image, docker_options, options.get("networks")
        )
    except Exception as error:  # the consumer's own errors, whatever their class
        return [f"{path}: {_one_line(error)}"]
    return [f"{path}: {problem}" for problem in _host_config_pairs(desired.get("host_config"))]


def _option_by_consumer(where, image, key, value, schema):
    try:
        translated = __salt__["docker_containers.translate"]({key: value})
        desired = __salt__["docker_containers.dry_run"](image, {key: value})
    except Exception as error:  # the consumer's own errors, whatever their class
        text = _one_line(error, key)
        if "not a container option" in text:
            names = __salt__["docker_containers.option_names"]() + list(OWN_OPTIONS)
            return [_kit("unknown")(where.rsplit(":", 1)[0], key, names)]
        return [f"{where}: {text}"]
    if len(translated) == 1:
        misread = _misread(value, next(iter(translated.values())))
        if misread:
            return [f"{where}: {misread}"]
    limits = schema["$defs"]["host_config"]
    found = _kit("validate")(desired.get("host_config") or {}, limits, "HostConfig", schema)
    return [f"{where}: dockerd refuses {problem}" for problem in found]


def _misread(pillar, translated):
    """How Salt's translation reads ``pillar`` other than it says (a string or a number made
    a boolean, a decimal cut to a whole number, a list made a string ...), or None."""
    describe = _kit("describe")
    if isinstance(translated, bool) and not isinstance(pillar, bool):
        return f"must be true or false, not {describe(pillar)}"
    if type(translated) is int and isinstance(pillar, (bool, float)):
        return f"must be a whole number, not {describe(pillar)}"
    if isinstance(translated, str) and isinstance(pillar, (bool, float, list, dict)):
        return f"must be a string, not {describe(pillar)} (YAML reads 1.10 as 1.1: quote it)"
    if isinstance(pillar, dict) and not isinstance(translated, dict):
        return f"must be a list, not {describe(pillar)}"
    return None


def _host_config_pairs(host):
    """Docker's rules between HostConfig fields (dockerd refuses the container)."""
    host = host or {}
    memory, swap = host.get("Memory") or 0, host.get("MemorySwap") or 0
    found = []
    if swap > 0 and (not memory or swap < memory):
        found.append("memswap_limit needs a mem_limit, and must not be below it")
    if memory and (host.get("MemoryReservation") or 0) > memory:
        found.append("mem_reservation must not exceed mem_limit")
    if host.get("NanoCpus") and (host.get("CpuPeriod") or host.get("CpuQuota")):
        found.append("nano_cpus (cpus) and cpu_period/cpu_quota cannot both be set")
    cpus = os.cpu_count() or 1  # the check runs on the node itself
    if (host.get("NanoCpus") or 0) > cpus * 10**9:
        found.append(f"nano_cpus: this node has {cpus} CPU(s): at most {cpus * 10**9}")
    wanted = [int(n) for n in re.findall(r"\d+", host.get("CpusetCpus") or "")]
    if wanted and max(wanted) >= cpus:
        found.append(f"cpuset_cpus: this node has CPUs 0-{cpus - 1}")
    for limit in host.get("Ulimits") or []:
        if -1 not in (limit.get("Soft"), limit.get("Hard")) and limit["Soft"] > limit["Hard"]:
            found.append(f"ulimits: {limit.get('Name')}: the soft limit is above the hard one")
    return found


# Salt's translator wraps what it found in a header and a YAML-ish dump.
TRANSLATOR_HEADER = re.compile(
    r"^invalid container options: Failed to translate input\. Additional info follows: "
    r"(?:invalid: -+ |collisions: - )?"
)


def _one_line(error, key=None):
    text = TRANSLATOR_HEADER.sub("", " ".join(str(error).split()))
    if key and text.startswith(f"{key}: "):
        text = text[len(key) + 2 :]
    return text or type(error).__name__


def _placeholders(value):
    """``value`` with each ``{secret: name}`` replaced by a string, as it will be."""
    if isinstance(value, dict):
        if set(value) == {"secret"}:
            return "secret-value"
        return {k: _placeholders(v) for k, v in value.items()}
    return value


def _network_addresses(settings, schema):
    """IPAM addresses as Docker parses them (the schema only knows their shape)."""
    problems = []
    for name, options in settings.get("networks", {}).items():
        pools = ((options or {}).get("ipam") or {}).get("pool_configs") or []
        for index, pool in enumerate(pools):
            problems += _pool_problems(f"docker:networks:{name}:ipam:pool_configs:{index}", pool)
    return problems


def _pool_problems(path, pool):
    problems = []
    subnet = None
    for key in ("subnet", "iprange"):
        try:
            network = ipaddress.ip_network(pool[key]) if key in pool else None
        except ValueError as error:
            problems.append(f"{path}:{key}: {error}")
            continue
        subnet = network if key == "subnet" else subnet
        if key == "iprange" and network and subnet and not network.subnet_of(subnet):
            problems.append(f"{path}:iprange: {network} is not inside the subnet {subnet}")
    for key, address in [
        ("gateway", pool.get("gateway")),
        *(pool.get("aux_addresses") or {}).items(),
    ]:
        if address is None:
            continue
        try:
            if subnet and ipaddress.ip_address(address) not in subnet:
                problems.append(f"{path}:{key}: {address} is not in the subnet {subnet}")
        except ValueError as error:
            problems.append(f"{path}:{key}: {error}")
    return problems


def _dockerd_that_validates():
    """The node's dockerd when it can check a configuration file (Engine >= 23), or None."""
    dockerd = salt.utils.path.which("dockerd")
    return dockerd if dockerd and _engine_major(dockerd) >= VALIDATE_SINCE else None


def _daemon_json_by_dockerd(settings, schema):
    """daemon.json as the formula writes it, by the node's own dockerd when it can check a
    file; else the schema's list of keys (those every supported engine takes) decided."""
    dockerd = _dockerd_that_validates()
    if not dockerd:
        return []
    config = __salt__["docker_host.daemon_json"](settings)
    with tempfile.NamedTemporaryFile("w", suffix=".json") as handle:
        json.dump(config, handle)
        handle.flush()
        proc = subprocess.run(
            [dockerd, "--validate", "--config-file", handle.name],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    if proc.returncode == 0:
        return []
    said = " ".join((proc.stderr or proc.stdout).replace(handle.name, "daemon.json").split())
    return [f"docker:config: the node's dockerd refuses it: {said}"]


# dockerd binary (path, mtime) -> its major version, for the life of the minion process.
_ENGINES = {}


def _engine_major(dockerd):
    try:
        key = (dockerd, os.stat(dockerd).st_mtime)
        if key not in _ENGINES:
            command = [dockerd, "--version"]
            proc = subprocess.run(command, capture_output=True, text=True, check=False, timeout=30)
            found = re.search(r"version (\d+)\.", proc.stdout)
            _ENGINES[key] = int(found.group(1)) if found else 0
    except (OSError, subprocess.SubprocessError):
        return 0
    return _ENGINES[key]


CROSS_CHECKS = (
    _packages_for_source,
    _absent_not_managed,
    _storage_owns_its_keys,
    _mountpoint_is_data_root,
    _image_store_fits_storage,
    _names_fit_lvm,
    _log_options,
    _volumes_from_itself,
    _network_addresses,
    _daemon_json_by_dockerd,
)
