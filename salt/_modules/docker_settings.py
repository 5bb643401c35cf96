"""
Checks of the docker formula's settings, before anything changes.

map.jinja merges defaults.yaml < osfamilymap.yaml < osmap.yaml < pillar ``docker:`` (pure
data); settings.jinja hands the result to ``checked``. Every SLS of the formula imports
settings.jinja, so a bad pillar fails rendering and the highstate stops before any state
runs. The checks are pure: no host probes (the disk and the engine are checked by the
docker_storage states when they run).

Every problem is reported at once, each with its full key path and, for an unknown key, the
nearest known one: ``docker:containers:postgres:volumes_form: unknown key (did you mean
volumes_from?)``. A value is normalised only where its meaning is unambiguous (an integer in
one of Docker's string maps becomes a string); anything else the consumer would reject, or
would read differently from what the pillar says, is refused.

Where the rules come from:
- which options containers, images, networks, volumes and registries accept: the parameters
  of the states that consume them (``docker_container.running`` with Salt's docker
  translator, the formula's ``docker_host`` wrapper states, ``docker_image.present``,
  ``docker_network.present``, ``docker_volume.present``), read from the installed Salt;
- the kind of value each container/network option takes: the helper Salt's translator uses
  for it (``translate_bool`` -> a boolean ...), then Salt's translator itself checks it;
- Docker's value rules (ports, restart policies, image references, byte sizes, string maps,
  names) and LVM's naming rules: written below, each a small named checker.

Also ``masked``: the secret values a state used, replaced in what it returns (the
docker_containers and docker_swarm states call it).
"""

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import ipaddress
import json
import os
import posixpath
import re

from salt.exceptions import CommandExecutionError, SaltInvocationError

__virtualname__ = "docker_settings"


def __virtual__():
    return __virtualname__


# --- loader entry points -----------------------------------------------------------------


def checked(settings, defaults=None):
    """
    The merged ``docker`` settings, checked and normalised; raises naming every bad key.

    The result is kept in ``__context__`` by content, so the same settings are checked once
    per job.

    CLI Example: ``salt '*' docker_settings.checked '{...}'``
    """
    digest = _digest(settings, defaults, __pillar__.get("docker_secrets"))
    cache = __context__.setdefault("docker_settings.checked", {})
    if digest not in cache:
        cache[digest] = validate(settings, defaults=defaults, pillar=__pillar__)
    return cache[digest]


def check_for_state_run(formula, settings, defaults=None):
    """
    ``checked``, with the result kept for the rest of this state run under ``formula`` (the
    formula's top directory; see ``state_run_settings``). settings.jinja calls this in the
    first SLS of a state run that needs the settings.
    """
    result = checked(settings, defaults)
    run = _state_run()
    if run is not None:
        __context__[STATE_RUN_KEY] = (run, {**_kept_for_this_run(), formula: result})
    return result


def state_run_settings(formula):
    """
    The settings ``check_for_state_run`` returned for ``formula`` earlier in this state run,
    or None.

    settings.jinja asks this first, so a highstate fetches and merges map.jinja's five files
    once instead of once per SLS (every fetch is a round trip to the master). Outside a state
    run it is always None.
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


def validate(settings, defaults=None, pillar=None, consumers=None):
    """
    Check ``settings`` (the merged ``docker:`` map) and return them normalised.

    ``pillar`` supplies ``docker_secrets`` (decrypted values, never printed) and the pillar's
    top-level keys; ``consumers`` maps a section to the options it accepts (default: read
    from the installed states, see ``consumer_options``).
    """
    pillar = pillar if pillar is not None else {}
    ctx = Context(
        secrets=pillar.get("docker_secrets"),
        consumers=consumers if consumers is not None else consumer_options(),
        defaults=defaults or {},
    )
    check_pillar_top(pillar, ctx)
    check_secrets_map(pillar.get("docker_secrets"), ctx)
    result = check_settings(settings, ctx)
    if ctx.problems:
        raise CommandExecutionError(
            "bad pillar, nothing was changed:\n  " + "\n  ".join(ctx.problems)
        )
    return result


def consumer_options():
    """
    ``{section: {option: kind}}``: what each section of the pillar accepts, read from the
    parameters of the states that consume it (cached for the life of the loader).

    CLI Example: ``salt '*' docker_settings.consumer_options``
    """
    cache = __context__.setdefault("docker_settings.consumers", {})
    if not cache:
        cache.update(build_consumer_options(_state_function))
    return cache


def _digest(*values):
    text = json.dumps(values, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


# --- the consumers' parameters -------------------------------------------------------------

# Where a state module lives when the loader has not loaded it (e.g. no docker SDK yet on a
# fresh node): saltext.dockermod on Salt 3008, Salt's core on 3007.
STATE_MODULES = {
    name: (f"saltext.dockermod.states.{name}", f"salt.states.{name}")
    for name in ("docker_container", "docker_image", "docker_network", "docker_volume")
}
# section -> (state functions whose parameters it accepts, Salt translator of their **kwargs)
CONSUMERS = {
    "containers": (("docker_container.running", "docker_containers.running"), "container"),
    "images": (("docker_image.present", "docker_containers.image_present"), None),
    "networks": (("docker_containers.network_present",), None),
    "volumes": (("docker_containers.volume_present",), None),
    "registries": (("docker_containers.registry_login",), None),
}
REQUIRED_STATES = ("docker_container.running", "docker_image.present")
# Options that have no default: null is refused for them.
REQUIRED_OPTIONS = ("image", "username", "password")
# Parameters the formula sets itself, or that would switch Salt's own checks off.
RESERVED = {
    "name": "is set from the key above it",
    "skip_translate": "would switch off Salt's checks of the other options",
    "ignore_collisions": "would switch off Salt's checks of the other options",
    "validate_ip_addrs": "would switch off Salt's checks of IP addresses",
    "config_path": "is set from docker:registry_config",
    "registry_config": "is set from docker:registry_config",
    "host_config": "is built by the container state from the other options",
    "networking_config": "is built by the container state from `networks`",
    "detach": "is set by the container state",
    "log_config": "is built from log_driver and log_opt",
    "docker_service": "is set from docker:service",
}
# docker SDK arguments the container state builds itself from the pillar's options.
SDK_ARGS_THE_STATE_BUILDS = ("host_config", "networking_config", "detach", "log_config")
# This formula's own state modules (salt/_states), read from the minion's synced copy.
OWN_STATE_MODULES = ("docker_host", "docker_containers")


def _state_function(ref):
    """The state function ``module.function``, or None when it does not exist here.

    Read from the module's file, not through Salt's state loader: asking the loader for a
    function that does not exist makes it load every state module (seconds per render)."""
    module_name, _, function_name = ref.partition(".")
    if module_name in OWN_STATE_MODULES:
        return _synced_state(module_name, function_name)
    return _imported_state(ref)


def _own_state_path(module_name):
    """Where the loader finds this formula's state module: the minion's synced copy
    (extension_modules), else ``states_dirs`` or ``module_dirs`` (a minion run from a
    checkout), as Salt's loader looks for it."""
    candidates = [os.path.join(__opts__["extension_modules"], "states")]
    candidates += list(__opts__.get("states_dirs") or [])
    for directory in __opts__.get("module_dirs") or []:
        candidates += [os.path.join(directory, "states"), os.path.join(directory, "_states")]
    for directory in candidates:
        path = os.path.join(directory, f"{module_name}.py")
        if os.path.exists(path):
            return path
    raise CommandExecutionError(
        f"state module {module_name} is not in {candidates[0]}: run saltutil.sync_states"
    )


def _synced_state(module_name, function_name):
    """A function of one of this formula's state modules, as the minion's loader sees it."""
    path = _own_state_path(module_name)
    spec = importlib.util.spec_from_file_location(f"docker_settings_{module_name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, function_name, None)


def _imported_state(ref):
    module_name, _, function_name = ref.partition(".")
    for candidate in STATE_MODULES.get(module_name, ()):
        try:
            module = importlib.import_module(candidate)
        except ImportError:
            continue
        return getattr(module, function_name, None)
    return None


def build_consumer_options(lookup):
    """``{section: {option: kind}}`` from the state functions that ``lookup(ref)`` finds."""
    sections = {}
    for section, (refs, translator) in CONSUMERS.items():
        options = translator_kinds(translator) if translator else {}
        if section == "containers":
            # Salt's translator passes options it does not know on to the docker SDK.
            options = {**dict.fromkeys(sdk_container_args(), "any"), **options}
            options.update(dict.fromkeys(SDK_ARGS_THE_STATE_BUILDS, "reserved"))
        for ref in refs:
            function = lookup(ref)
            if function is None and ref in REQUIRED_STATES:
                raise CommandExecutionError(
                    f"cannot read the parameters of {ref}: is Salt's docker state module "
                    "(saltext.dockermod on Salt 3008) installed?"
                )
            if function is not None:
                options.update(parameter_kinds(function))
        sections[section] = options
    return sections


# The docker SDK's create_container/create_host_config arguments (docker 7.2.0): used only
# when the SDK is not importable yet (a fresh node renders before install.sls installs it);
# tests/unit/test_bad_pillars.py checks this list against the installed SDK.
SDK_CONTAINER_ARGS = (
    "auto_remove", "binds", "blkio_weight", "blkio_weight_device", "cap_add", "cap_drop",
    "cgroup_parent", "cgroupns", "command", "cpu_count", "cpu_percent", "cpu_period",
    "cpu_quota", "cpu_rt_period", "cpu_rt_runtime", "cpu_shares", "cpuset_cpus", "cpuset_mems",
    "detach", "device_cgroup_rules", "device_read_bps", "device_read_iops", "device_requests",
    "device_write_bps", "device_write_iops", "devices", "dns", "dns_opt", "dns_search",
    "domainname", "entrypoint", "environment", "extra_hosts", "group_add", "healthcheck",
    "host_config", "hostname", "image", "init", "init_path", "ipc_mode", "isolation",
    "kernel_memory", "labels", "links", "log_config", "lxc_conf", "mem_limit",
    "mem_reservation", "mem_swappiness", "memswap_limit", "mounts", "name", "nano_cpus",
    "network_disabled", "network_mode", "networking_config", "oom_kill_disable",
    "oom_score_adj", "pid_mode", "pids_limit", "platform", "port_bindings", "ports",
    "privileged", "publish_all_ports", "read_only", "restart_policy", "runtime", "security_opt",
    "shm_size", "stdin_open", "stop_signal", "stop_timeout", "storage_opt", "sysctls", "tmpfs",
    "tty", "ulimits", "use_config_proxy", "user", "userns_mode", "uts_mode", "volume_driver",
    "volumes", "volumes_from", "working_dir",
)  # fmt: skip


def sdk_container_args():
    """The container options the installed docker SDK takes (else SDK_CONTAINER_ARGS)."""
    try:
        import salt.utils.dockermod  # noqa: PLC0415 - needs the docker SDK, which may be absent

        accepted = salt.utils.dockermod.get_client_args(["create_container", "host_config"])
    except Exception:  # no SDK yet, or one Salt cannot read: the pinned version's list
        return SDK_CONTAINER_ARGS
    return tuple(sorted(set(accepted["create_container"]) | set(accepted["host_config"])))


def parameter_kinds(function):
    """The named parameters of a state function -> kind of value, from their defaults."""
    kinds = {}
    for name, parameter in inspect.signature(function).parameters.items():
        if parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
            continue
        if name in RESERVED:
            kinds[name] = "reserved"
        elif parameter.default is parameter.empty:
            kinds[name] = "required"
        else:
            kinds[name] = _kind_of_default(parameter.default)
    return kinds


def _kind_of_default(default):
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, str):
        return "str"
    return "any"


# The helper each of Salt's translator functions calls says what kind of value it takes.
TRANSLATOR_HELPER_KINDS = {
    "translate_bool": "bool",
    "translate_int": "int",
    "translate_str": "str",
    "translate_bytes": "bytes",
    "translate_stringlist": "strlist",
    "translate_key_val": "strmap",
    "translate_labels": "strmap",
    "translate_command": "command",
    "translate_dict": "dict",
}


def translator_module(kind):
    return importlib.import_module(f"salt.utils.dockermod.translate.{kind}")


def translator_kinds(kind):
    """Options Salt's docker translator ``kind`` knows (and their aliases) -> kind of value."""
    module = translator_module(kind)
    kinds = {}
    for name, function in inspect.getmembers(module, inspect.isfunction):
        if name.startswith("_") or function.__module__ != module.__name__:
            continue
        helpers = [TRANSLATOR_HELPER_KINDS.get(n) for n in function.__code__.co_names]
        helpers = [helper for helper in helpers if helper]
        kinds[name] = helpers[0] if helpers else "any"
    for alias, target in getattr(module, "ALIASES", {}).items():
        kinds[alias] = f"alias:{target}"
    return kinds


def salt_translator_error(kind, option, value):
    """What Salt's translator says about ``option: value`` (None when it accepts it)."""
    module = translator_module(kind)
    real = getattr(module, "ALIASES", {}).get(option, option)
    function = getattr(module, real, None)
    if function is None:
        return None
    try:
        function(value, validate_ip_addrs=True, skip_translate=())
    except SaltInvocationError as error:
        return str(error.strerror if hasattr(error, "strerror") else error)
    except (TypeError, ValueError, AttributeError) as error:
        return f"Salt cannot read it ({error})"
    return None


# --- problems, suggestions ------------------------------------------------------------------


class Context:
    """What the checkers share: the problems found so far, secrets, consumers, defaults."""

    def __init__(self, secrets, consumers, defaults):
        self.problems = []
        self.secrets = secrets if isinstance(secrets, dict) else {}
        self.consumers = consumers
        self.defaults = defaults

    def error(self, path, message):
        self.problems.append(f"{path}: {message}")

    def unknown(self, path, key, known):
        self.error(f"{path}:{key}", "unknown key" + suggestion(key, known))


def suggestion(word, candidates):
    """`` (did you mean x?)`` with the nearest candidate, or an empty string. Ties go to
    the candidate listed first."""
    scored = []
    for index, candidate in enumerate(str(c) for c in candidates):
        ratio = difflib.SequenceMatcher(None, str(word), candidate).ratio()
        if ratio >= 0.6:
            scored.append((-ratio, index, candidate))
    return f" (did you mean {min(scored)[2]}?)" if scored else ""


# How each kind of value reads in an error message (bool before int: True is an int).
_DESCRIPTIONS = (
    (bool, lambda value: f"the boolean {str(value).lower()}"),
    ((int, float), lambda value: f"the number {value!r}"),
    (str, lambda value: f"the string {value[:80]!r}"),
    (list, lambda value: "a list"),
    (dict, lambda value: "a mapping"),
)


def describe(value):
    """How a value reads in an error message. Secret values never reach this."""
    if value is None:
        return "null"
    for kinds, text in _DESCRIPTIONS:
        if isinstance(value, kinds):
            return text(value)
    return type(value).__name__


def is_secret_ref(value):
    return isinstance(value, dict) and set(value) == {"secret"}


SECRET_PLACES = "containers:<name>:environment values and registries:<host>:password"


def refuse_secret(value, path, ctx):
    """True (and a problem) when ``value`` holds a ``{secret: name}`` anywhere inside."""
    found = list(_secret_paths(value, path))
    for where in found:
        ctx.error(where, f"a {{secret: name}} is not resolved here (only in {SECRET_PLACES})")
    return bool(found)


def _secret_paths(value, path):
    if is_secret_ref(value):
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _secret_paths(item, f"{path}:{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _secret_paths(item, f"{path}:{index}")


# --- the pillar's own top-level keys and the secrets ---------------------------------------

TOP_LEVEL_KEYS = ("docker", "docker_secrets", "node_class")


def check_pillar_top(pillar, ctx):
    """A top-level key that is a near miss of one of the formula's (``docker_secret``)."""
    for key in pillar:
        if not isinstance(key, str) or key in TOP_LEVEL_KEYS or key.startswith("docker."):
            continue
        if key.lower().startswith(("docker", "node_cl")):
            ctx.unknown("pillar", key, TOP_LEVEL_KEYS)


def check_secrets_map(secrets, ctx):
    """``docker_secrets``: names to non-empty, decrypted strings."""
    if secrets is None:
        return
    if not isinstance(secrets, dict):
        ctx.error(
            "docker_secrets", f"must be a mapping of names to values, not {describe(secrets)}"
        )
        return
    for name, value in secrets.items():
        path = f"docker_secrets:{name}"
        if not isinstance(value, str):
            ctx.error(path, "must be a string (an encrypted block)")
        elif not value.strip():
            ctx.error(path, "decrypts to an empty value")
        elif "-----BEGIN PGP MESSAGE-----" in value:
            ctx.error(path, "is still ciphertext: the master could not decrypt it")


MASK = "**********"


def masked(value, secrets):
    """
    ``value`` (a state's return, an error message ...) with each of ``secrets`` replaced by
    ``**********`` in every string inside it, mapping keys included. The longest secret first,
    so that a secret containing another is masked whole. Without secrets, ``value`` itself;
    with any, lists and tuples come back as lists.

    The docker_containers and docker_swarm states pass what they return through this.

    CLI Example: ``salt '*' docker_settings.masked '{comment: "A=s3cret"}' '[s3cret]'``
    """
    hidden = sorted({secret for secret in secrets if secret}, key=len, reverse=True)
    return _masked_with(value, hidden) if hidden else value


def _masked_with(value, hidden):
    if isinstance(value, str):
        for secret in hidden:
            value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {
            _masked_with(key, hidden): _masked_with(item, hidden) for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_masked_with(item, hidden) for item in value]
    return value


def secret_value(value, path, ctx):
    """A ``{secret: name}`` where secrets are resolved: the name must be a usable secret."""
    name = value["secret"]
    if not isinstance(name, str) or not name:
        ctx.error(path, f"secret name must be a string, not {describe(name)}")
    elif name not in ctx.secrets:
        ctx.error(
            path,
            f"refers to secret {name!r}, which is not in pillar docker_secrets"
            + suggestion(name, ctx.secrets)
            + " (is the encrypted pillar for this class in the pillar top?)",
        )
    return value


# --- generic checkers: (value, path, ctx) -> normalised value -------------------------------


def boolean(value, path, ctx):
    if not isinstance(value, bool):
        hint = " (write it without quotes)" if str(value).lower() in ("true", "false") else ""
        ctx.error(path, f"must be true or false, not {describe(value)}{hint}")
    return value


def integer(low=None, high=None):
    def check(value, path, ctx):
        if isinstance(value, bool) or not isinstance(value, int):
            ctx.error(path, f"must be a whole number, not {describe(value)}")
        elif (low is not None and value < low) or (high is not None and value > high):
            ctx.error(path, f"{value} is out of range ({_range_text(low, high)})")
        return value

    return check


def _range_text(low, high):
    if high is None:
        return f"at least {low}"
    return f"{low}..{high}" if low is not None else f"at most {high}"


def string(pattern=None, what="a string"):
    regex = re.compile(pattern) if pattern else None

    def check(value, path, ctx):
        if refuse_secret(value, path, ctx):
            return value
        if not isinstance(value, str):
            ctx.error(path, f"must be {what}, not {describe(value)}")
        elif regex and not regex.fullmatch(value):
            ctx.error(path, f"{value[:80]!r} is not {what}")
        return value

    return check


def one_of(choices):
    def check(value, path, ctx):
        if value not in choices or isinstance(value, bool):
            ctx.error(
                path,
                f"{describe(value)} is not one of {', '.join(map(str, choices))}"
                + suggestion(value, choices),
            )
        return value

    return check


def optional(checker):
    def check(value, path, ctx):
        return value if value is None else checker(value, path, ctx)

    return check


def list_of(item_checker):
    def check(value, path, ctx):
        if not isinstance(value, list):
            ctx.error(path, f"must be a list, not {describe(value)}")
            return value
        return [item_checker(item, f"{path}:{index}", ctx) for index, item in enumerate(value)]

    return check


_LEFT_OUT = object()


def _mapping_of(check_entry, what="a mapping"):
    """A mapping checker: ``check_entry(key, item, path, ctx)`` is each entry's checked value,
    or ``_LEFT_OUT`` to leave the entry out."""

    def check(value, path, ctx):
        if not isinstance(value, dict):
            ctx.error(path, f"must be {what}, not {describe(value)}")
            return value
        checked = {key: check_entry(key, item, path, ctx) for key, item in value.items()}
        return {key: item for key, item in checked.items() if item is not _LEFT_OUT}

    return check


def map_of(key_checker, value_checker):
    def check_entry(key, item, path, ctx):
        key_checker(key, f"{path}:{key}", ctx)
        return value_checker(item, f"{path}:{key}", ctx)

    return _mapping_of(check_entry)


def fixed(fields):
    """A mapping whose keys are ``fields`` (key -> checker); an unknown key is refused."""

    def check_entry(key, item, path, ctx):
        if key not in fields:
            ctx.unknown(path, key, fields)
            return _LEFT_OUT
        return fields[key](item, f"{path}:{key}", ctx)

    return _mapping_of(check_entry)


def anything(value, path, ctx):
    refuse_secret(value, path, ctx)
    return value


def by_default(default):
    """The checker for a key only defaults.yaml knows: the kind of its default value."""
    if isinstance(default, bool):
        return boolean
    if isinstance(default, int):
        return integer()
    if isinstance(default, str):
        return string()
    return anything


# --- strings in Docker's string maps (log options, labels, environment ...) ----------------


def map_string(value, path, ctx):
    """A value in one of Docker's string maps: integers become strings, nothing else does."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        ctx.error(path, f'must be a string: write "{str(value).lower()}" (in quotes)')
    elif isinstance(value, int):
        return str(value)
    elif isinstance(value, float):
        ctx.error(path, f"must be a string: YAML read {value!r} as a number; quote it")
    else:
        ctx.error(path, f"must be a string, not {describe(value)}")
    return value


def string_map(delimiter="=", secrets_allowed=False):
    """Docker's string maps: a mapping of strings, or a list of ``key<delimiter>value``."""

    def check_entry(key, item, path, ctx):
        where = f"{path}:{key}"
        if not isinstance(key, str) or not key:
            ctx.error(where, "keys must be non-empty strings")
        if is_secret_ref(item) and secrets_allowed:
            return secret_value(item, where, ctx)
        if refuse_secret(item, where, ctx):
            return _LEFT_OUT
        return map_string(item, where, ctx)

    mapping = _mapping_of(check_entry, "a mapping of strings")

    def check(value, path, ctx):
        if isinstance(value, list):
            return _string_map_list(value, path, ctx, delimiter)
        return mapping(value, path, ctx)

    return check


def _string_map_list(value, path, ctx, delimiter):
    for index, item in enumerate(value):
        where = f"{path}:{index}"
        if refuse_secret(item, where, ctx):
            continue
        if not isinstance(item, str) or delimiter not in item or item.startswith(delimiter):
            ctx.error(where, f"must be a 'key{delimiter}value' string, not {describe(item)}")
    return value


def string_list(value, path, ctx):
    return list_of(string())(value, path, ctx)


# --- names and paths --------------------------------------------------------------------------

# Docker: container, network and volume names ([a-zA-Z0-9][a-zA-Z0-9_.-]+).
DOCKER_NAME = r"[a-zA-Z0-9][a-zA-Z0-9_.-]+"
docker_name = string(DOCKER_NAME, "a Docker name ([a-zA-Z0-9][a-zA-Z0-9_.-]+)")
# docker_containers.running names a container's replacement and its predecessor so.
REPLACEMENT_SUFFIXES = ("..next", "..previous")


def container_name(value, path, ctx):
    """A Docker name the container state can replace in place (not one of its own names)."""
    docker_name(value, path, ctx)
    if isinstance(value, str) and value.endswith(REPLACEMENT_SUFFIXES):
        ctx.error(
            path,
            f"{value!r}: names ending in {' or '.join(REPLACEMENT_SUFFIXES)} are kept for "
            "the container state's replacements",
        )
    return value


PACKAGE_NAME = r"[A-Za-z0-9][A-Za-z0-9+._~:=-]*"
package_name = string(PACKAGE_NAME, "a package name")
unit_name = string(r"[A-Za-z0-9_.@:][A-Za-z0-9_.@:-]*", "a service name")
SYSTEM_DIRECTORIES = frozenset(
    "/ /bin /boot /dev /etc /home /lib /lib32 /lib64 /libx32 /media /mnt /opt /proc /root /run"
    " /sbin /srv /sys /tmp /usr /usr/bin /usr/lib /usr/local /usr/sbin /usr/share /var"
    " /var/lib /var/log /var/cache /var/tmp /var/run /var/spool /var/mail".split()
)


def absolute_path(value, path, ctx):
    """An absolute, normalised path without whitespace (it lands in fstab and argv)."""
    if refuse_secret(value, path, ctx):
        return value
    if not isinstance(value, str):
        ctx.error(path, f"must be an absolute path, not {describe(value)}")
    elif not value.startswith("/") or value.startswith("//"):
        ctx.error(path, f"{value!r} is not an absolute path")
    elif posixpath.normpath(value) != value:
        ctx.error(path, f"{value!r} is not normalised (write {posixpath.normpath(value)!r})")
    elif re.search(r"[\s\x00-\x1f]", value):
        ctx.error(path, f"{value!r} contains whitespace or control characters")
    return value


def mountpoint(value, path, ctx):
    absolute_path(value, path, ctx)
    if value in SYSTEM_DIRECTORIES:
        ctx.error(path, f"{value!r} is a system directory: mounting over it would hide it")
    return value


def file_path(value, path, ctx):
    absolute_path(value, path, ctx)
    if value in SYSTEM_DIRECTORIES:
        ctx.error(path, f"{value!r} is a system directory, not a file")
    return value


def device_path(value, path, ctx):
    absolute_path(value, path, ctx)
    if isinstance(value, str) and not re.fullmatch(r"/dev/[A-Za-z0-9_.:/-]+", value):
        ctx.error(path, f"{value!r} is not a device under /dev")
    return value


volume_id = string(r"vol-[0-9a-f]{8}(?:[0-9a-f]{9})?", "an EBS volume id (vol-...)")


https_url = string(r"https://[^\s\[\]'\"]+", "an https:// URL")


_SPEC = r"\s*(?:[<>!~]=?|==)\s*[A-Za-z0-9.*+!-]+"


# One requirement for pip (a name and a version range; no options, URLs or files).
pip_requirement = string(
    rf"[A-Za-z0-9][A-Za-z0-9._-]*(?:\[[A-Za-z0-9,._-]+\])?(?:{_SPEC}(?:\s*,{_SPEC})*)?",
    "a pip requirement such as docker>=7.1",
)


# --- LVM (lvm(8) "VALID NAMES", lvcreate(8) --extents) ----------------------------------------

LVM_NAME = re.compile(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]*")
LV_RESERVED_PREFIXES = ("snapshot", "pvmove")
LV_RESERVED_PARTS = (
    "_cdata _cmeta _corig _iorig _mimage _mlog _pmspare _rimage _rmeta _tdata _tmeta"
    " _vdata _vdo _vorigin"
).split()
# /dev/<vg> is the VG's directory: a name that is already something in /dev cannot be used.
DEV_ENTRIES = frozenset(
    "block bsg bus char console core cpu disk dri fd full hugepages initctl input kmsg log"
    " loop-control mapper mem mqueue net null ptmx pts random rtc shm snd stderr stdin stdout"
    " tty urandom vfio vhost-net zero".split()
)
EXTENTS = re.compile(r"(?P<count>[1-9][0-9]*)(?:%(?P<of>VG|FREE|PVS))?")


def _lvm_name(value, path, ctx, what):
    if not isinstance(value, str):
        ctx.error(path, f"must be {what}, not {describe(value)}")
        return False
    if not LVM_NAME.fullmatch(value) or value in (".", "..") or len(value) > 127:
        ctx.error(path, f"{value!r} is not {what} (letters, digits, + _ . -; not starting with -)")
        return False
    return True


def vg_name(value, path, ctx):
    if _lvm_name(value, path, ctx, "an LVM volume group name") and value in DEV_ENTRIES:
        ctx.error(path, f"{value!r} is taken: /dev/{value} is not a volume group's directory")
    return value


def lv_name(value, path, ctx):
    if not _lvm_name(value, path, ctx, "an LVM logical volume name"):
        return value
    if value.startswith(LV_RESERVED_PREFIXES):
        ctx.error(path, f"{value!r}: LVM reserves names starting with snapshot or pvmove")
    reserved = [part for part in LV_RESERVED_PARTS if part in value]
    if reserved:
        ctx.error(path, f"{value!r}: LVM reserves names containing {reserved[0]}")
    return value


def extents(value, path, ctx):
    """lvcreate -l: a number of extents, or N%VG / N%FREE / N%PVS (N <= 100)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = EXTENTS.fullmatch(value) if isinstance(value, str) else None
    if not match:
        ctx.error(path, f"{describe(value)} is not an extent count (N, N%VG, N%FREE or N%PVS)")
    elif match.group("of") and int(match.group("count")) > 100:
        ctx.error(path, f"{value!r}: a percentage cannot exceed 100")
    elif not match.group("of"):
        return int(value)
    return value


# An LVM profile: /etc/lvm/profile/<name>.profile, so a plain file name.
profile_name = string(r"[A-Za-z0-9_+][A-Za-z0-9_+.-]*", "an LVM profile name (a plain file name)")


# --- Docker's value rules ------------------------------------------------------------------

RESTART_POLICIES = ("no", "always", "unless-stopped", "on-failure")
# distribution/reference's grammar: [domain[:port]/]path[:tag][@digest].
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_HOST = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9a-fA-F:]+\])"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
IMAGE_REFERENCE = re.compile(
    rf"(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?"
)
BYTES = re.compile(r"[0-9]+(?:\.[0-9]+)?[bkmgBKMG]?[bB]?")
PORT = r"[0-9]+(?:-[0-9]+)?"
PORT_BINDING = re.compile(
    rf"(?:(?P<ip>[0-9]+(?:\.[0-9]+){{3}}|\[[0-9a-fA-F:]+\]):)?(?:(?P<host>{PORT})?:)?"
    rf"(?P<container>{PORT})(?:/(?P<proto>tcp|udp|sctp))?"
)


def image_reference(value, path, ctx):
    if refuse_secret(value, path, ctx):
        return value
    if not isinstance(value, str):
        ctx.error(path, f"must be an image reference such as postgres:16, not {describe(value)}")
        return value
    match = IMAGE_REFERENCE.fullmatch(value)
    if not match or len(match.group("path")) + len(match.group("domain") or "") > 255:
        ctx.error(
            path,
            f"{value!r} is not a valid image reference ([registry[:port]/]name[:tag][@digest],"
            " name in lowercase)",
        )
    return value


def restart_policy(value, path, ctx):
    """no | always | unless-stopped | on-failure[:N]: a retry count only with on-failure."""
    if not isinstance(value, str):
        ctx.error(path, f"must be a string such as on-failure:5, not {describe(value)}")
        return value
    name, _, count = value.partition(":")
    if name not in RESTART_POLICIES:
        ctx.error(
            path,
            f"{value!r} is not one of {', '.join(RESTART_POLICIES)}"
            + suggestion(name, RESTART_POLICIES),
        )
    elif count and name != "on-failure":
        ctx.error(
            path,
            f"{value!r}: Docker accepts a retry count only with on-failure (on-failure:{count})",
        )
    elif count and not count.isdigit():
        ctx.error(path, f"{value!r}: the retry count must be a number")
    return value


def byte_size(value, path, ctx):
    """Memory sizes: bytes as a number, or a number with b, k, m or g (docker SDK units)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < -1:
            ctx.error(path, f"{value} is not a size")
    elif not isinstance(value, str) or not BYTES.fullmatch(value):
        ctx.error(path, f"{describe(value)} is not a size (a number of bytes, or e.g. 512m, 2g)")
    return value


def _port_range(text):
    start, _, end = text.partition("-")
    return int(start), int(end or start)


def port_binding(value, path, ctx):
    """One binding as `docker run -p` writes it: [ip:][host:]container[/proto], a string."""
    if isinstance(value, int) and not isinstance(value, bool):
        ctx.error(
            path,
            f"the number {value} must be a string in quotes (YAML reads an unquoted "
            "host:container such as 22:22 as a base-60 number)",
        )
        return value
    match = PORT_BINDING.fullmatch(value) if isinstance(value, str) else None
    if not match:
        ctx.error(
            path, f"{describe(value)} is not a port binding ([ip:][host:]container[/tcp|udp|sctp])"
        )
        return value
    ranges = [_port_range(match.group(g)) for g in ("host", "container") if match.group(g)]
    if any(not 0 < port < 65536 for pair in ranges for port in pair):
        ctx.error(path, f"{value!r}: ports are 1..65535")
    elif any(start > end for start, end in ranges):
        ctx.error(path, f"{value!r}: a port range must go upwards")
    elif len(ranges) == 2 and ranges[0][1] - ranges[0][0] != ranges[1][1] - ranges[1][0]:
        ctx.error(path, f"{value!r}: host and container ranges differ in length")
    _check_binding_ip(match.group("ip"), value, path, ctx)
    return value


def _check_binding_ip(ip, value, path, ctx):
    if not ip:
        return
    try:
        ipaddress.ip_address(ip.strip("[]"))
    except ValueError:
        ctx.error(path, f"{value!r}: {ip} is not an IP address")


def port_bindings(value, path, ctx):
    if isinstance(value, dict):
        read_as = ", ".join(f'"{host}:{cport}"' for cport, host in list(value.items())[:2])
        ctx.error(
            path,
            "a mapping is refused: Docker's SDK reads it as {container port: host port}, "
            f"i.e. [{read_as}] in `docker run -p` order, the reverse of what it looks like; "
            'write a list of [ip:]host:container strings, e.g. ["127.0.0.1:15432:5432"] '
            "(without an IP Docker publishes on every interface)",
        )
        return value
    return list_of(port_binding)(value, path, ctx)


def exposed_port(value, path, ctx):
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not re.fullmatch(rf"{PORT}(?:/(?:tcp|udp|sctp))?", value):
        ctx.error(path, f"{describe(value)} is not a port (N, N-M, N/udp)")
    return value


def command(value, path, ctx):
    if isinstance(value, str) or refuse_secret(value, path, ctx):
        return value
    return list_of(map_string)(value, path, ctx)


def container_path(value, path, ctx):
    """A volume: an absolute path in the container, or name:/path[:ro|rw]."""
    if not isinstance(value, str):
        ctx.error(path, f"must be a path in the container, not {describe(value)}")
    elif not re.fullmatch(rf"(?:(?:{DOCKER_NAME}|/[^:\s]*):)?/[^:\s]*(?::(?:ro|rw))?", value):
        ctx.error(path, f"{value!r} is not /path or name:/path[:ro|rw]")
    return value


# volumes_from: container[:ro|rw].
volume_source = string(rf"{DOCKER_NAME}(?::(?:ro|rw))?", "a container name[:ro|rw]")


def network_ref(value, path, ctx):
    """networks: a name, or {name: {aliases, ipv4_address, ...}}."""
    if isinstance(value, dict) and len(value) == 1:
        ((name, options),) = value.items()
        docker_name(name, path, ctx)
        optional(fixed_network_attachment)(options, f"{path}:{name}", ctx)
        return value
    docker_name(value, path, ctx)
    return value


def fixed_network_attachment(value, path, ctx):
    fields = {
        "aliases": string_list,
        "links": string_list,
        "ipv4_address": string(),
        "ipv6_address": string(),
        "ipv4_addresses": string_list,
        "ipv6_addresses": string_list,
        "driver_opts": string_map(),
        "mac_address": string(),
    }
    if isinstance(value, list):  # [{aliases: [...]}] as Salt's docs also show
        for index, item in enumerate(value):
            fixed(fields)(item, f"{path}:{index}", ctx)
        return value
    return fixed(fields)(value, path, ctx)


def user(value, path, ctx):
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    string(r"[A-Za-z0-9_.-]+(?::[A-Za-z0-9_.-]+)?", "a user[:group] or uid")(value, path, ctx)
    return value


def registry_password(value, path, ctx):
    if is_secret_ref(value):
        return secret_value(value, path, ctx)
    if not isinstance(value, str) or not value:
        ctx.error(path, f"must be a {{secret: name}} or a string, not {describe(value)}")
    return value


# Kinds of value (from the consumers' parameters) -> checker.
KIND_CHECKERS = {
    "bool": boolean,
    "int": integer(),
    "str": string(),
    "bytes": byte_size,
    "strlist": string_list,
    "strmap": string_map(),
    "command": command,
    "dict": anything,
    "any": anything,
}
# Docker's rules for options whose kind alone says too little.
OPTION_CHECKERS = {
    "image": image_reference,
    "port_bindings": port_bindings,
    "ports": list_of(exposed_port),
    "restart_policy": restart_policy,
    "environment": string_map(secrets_allowed=True),
    "log_opt": string_map(),
    "labels": string_map(),
    "sysctls": string_map(),
    "storage_opt": string_map(),
    "extra_hosts": string_map(delimiter=":"),
    "links": string_map(delimiter=":"),
    "volumes": list_of(container_path),
    "volumes_from": list_of(volume_source),
    "networks": list_of(network_ref),
    "command": command,
    "entrypoint": command,
    "user": user,
    "working_dir": string(r"/.*", "an absolute path"),
    "shutdown_timeout": integer(0),
    "stop_timeout": integer(0),
    "client_timeout": integer(1),
    "cpu_shares": integer(2, 262144),
    "cpu_period": integer(1000, 1000000),
    "mem_swappiness": integer(0, 100),
    "oom_score_adj": integer(-1000, 1000),
    "pids_limit": integer(-1),
    "pull": one_of(("missing", "always", "never")),
    "watch_action": one_of(
        ("force", "SIGHUP", "SIGTERM", "SIGKILL", "SIGINT", "SIGUSR1", "SIGUSR2")
    ),
    "password": registry_password,
    "username": string(r"\S+", "a user name"),
    "driver_opts": string_map(),
    "options": string_map(),
    "tag": string(r"[\w][\w.-]{0,127}", "an image tag"),
}


# --- options of containers, images, networks, volumes, registries ----------------------------


def options_of(section, required=()):
    """Options checked against what the states consuming ``section`` accept."""

    def check(value, path, ctx):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            ctx.error(path, f"must be a mapping of options, not {describe(value)}")
            return value
        accepted = ctx.consumers.get(section, {})
        result = {key: _option(section, key, item, path, ctx) for key, item in value.items()}
        _check_aliases(value, accepted, path, ctx)
        for key in required:
            if key not in value:
                ctx.error(f"{path}:{key}", "is missing")
        return result

    return check


def _option(section, key, value, path, ctx):
    accepted = ctx.consumers.get(section, {})
    where = f"{path}:{key}"
    kind = accepted.get(key)
    if kind is None:
        canonical, aliases = _suggestable(accepted)
        hint = suggestion(key, canonical) or suggestion(key, aliases)
        ctx.error(where, "unknown key" + hint)
        return value
    if kind == "reserved":
        ctx.error(where, f"cannot be set here: it {RESERVED.get(key, 'is set by the formula')}")
        return value
    if value is None and key not in REQUIRED_OPTIONS:
        return value  # null: the state's own default
    target = kind.split(":", 1)[1] if kind.startswith("alias:") else key
    checker = OPTION_CHECKERS.get(target) or OPTION_CHECKERS.get(key)
    if checker is None:
        checker = KIND_CHECKERS.get(accepted.get(target, kind), anything)
    before = len(ctx.problems)
    value = checker(value, where, ctx)
    if len(ctx.problems) == before:
        _salt_translator_check(section, key, value, where, ctx)
    return value


def _suggestable(accepted):
    """Options to suggest: canonical names, then aliases (only when no canonical is close)."""
    canonical = [k for k, v in accepted.items() if v != "reserved" and not v.startswith("alias:")]
    aliases = [k for k, v in accepted.items() if v.startswith("alias:")]
    return canonical, aliases


def _salt_translator_check(section, key, value, path, ctx):
    translator = CONSUMERS[section][1]
    if translator is None or _holds_secret(value):
        return
    problem = salt_translator_error(translator, key, value)
    if problem:
        ctx.error(path, f"Salt's docker translator refuses it: {problem}")


def _holds_secret(value):
    return any(True for _ in _secret_paths(value, ""))


def _check_aliases(value, accepted, path, ctx):
    for key in value:
        kind = accepted.get(key, "")
        if kind.startswith("alias:") and kind[6:] in value:
            ctx.error(f"{path}:{key}", f"is another name for {kind[6:]}: give only one of them")


# A registry as docker login names it: host[:port], no scheme or path.
registry_host = string(
    rf"{_HOST}(?::[0-9]{{1,5}})?", "a registry host[:port] (no https://, no path)"
)


def container(value, path, ctx):
    return options_of("containers", required=("image",))(value, path, ctx)


# --- daemon.json ---------------------------------------------------------------------------

# dockerd's configuration file keys (Linux), Engine 20.10 .. 27: dockerd refuses any other
# ("the following directives don't match any configuration option") and would not start.
DAEMON_JSON_KEYS = frozenset(
    """allow-direct-routing allow-nondistributable-artifacts api-cors-header
    authorization-plugins bip bip6 bridge bridge-accept-fwmark builder cdi-spec-dirs
    cgroup-parent cluster-advertise cluster-store cluster-store-opts containerd
    containerd-namespace containerd-plugins-namespace cpu-rt-period cpu-rt-runtime data-root
    debug default-address-pools default-cgroupns-mode default-gateway default-gateway-v6
    default-ipc-mode default-network-opts default-runtime default-shm-size default-ulimits
    deprecated-key-path dns dns-opts dns-search exec-opts exec-root experimental features
    firewall-backend fixed-cidr fixed-cidr-v6 group host-gateway-ip host-gateway-ips hosts
    http-proxy https-proxy icc init init-path insecure-registries ip ip-forward
    ip-forward-no-drop ip-masq ip6tables iptables ipv6 labels live-restore log-driver
    log-format log-level log-opts max-concurrent-downloads max-concurrent-uploads
    max-download-attempts metrics-addr min-api-version mtu no-new-privileges no-proxy
    node-generic-resources oom-score-adjust pidfile proxies raw-logs registry-mirrors
    runtimes seccomp-profile selinux-enabled shutdown-timeout storage-driver storage-opts
    swarm-default-advertise-addr tls tlscacert tlscert tlskey tlsverify userland-proxy
    userland-proxy-path userns-remap""".split()
)
DAEMON_JSON_CHECKERS = {
    "log-opts": string_map(),
    "labels": string_list,
    "data-root": absolute_path,
    "exec-root": absolute_path,
    "log-driver": string(),
    "debug": boolean,
    "live-restore": boolean,
    "iptables": boolean,
    "ipv6": boolean,
    "icc": boolean,
    "dns": string_list,
    "insecure-registries": string_list,
    "registry-mirrors": list_of(https_url),
    "max-concurrent-downloads": integer(1),
    "max-concurrent-uploads": integer(1),
    "mtu": integer(0),
    "shutdown-timeout": integer(0),
    # dockerd reads features as a map of names to booleans (containerd-snapshotter, cdi ...).
    "features": map_of(string(r"[a-z0-9][a-z0-9-]*", "a feature name"), boolean),
}
STORAGE_MANAGED_KEYS = ("storage-driver", "storage-opts")


def _daemon_json_entry(key, item, path, ctx):
    where = f"{path}:{key}"
    if key not in DAEMON_JSON_KEYS:
        ctx.unknown(path, key, DAEMON_JSON_KEYS)
        return _LEFT_OUT
    if refuse_secret(item, where, ctx):
        return _LEFT_OUT
    return DAEMON_JSON_CHECKERS.get(key, _json_value)(item, where, ctx)


# daemon.json: dockerd's keys only, Docker's string maps as strings, no secrets.
daemon_config = _mapping_of(_daemon_json_entry, "a mapping (daemon.json)")


def _json_value(value, path, ctx):
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        ctx.error(path, f"{describe(value)} cannot be written to daemon.json")
    return value


# --- the formula's own sections ------------------------------------------------------------

INSTALL_SOURCES = ("distribution", "docker")
STORAGE_MODES = ("none", "overlay2", "devicemapper")
FILESYSTEMS = ("xfs", "ext4")
# One mount(8) option, as mount.mounted passes it on: a word, or word=value (no comma, space).
MOUNT_OPTION = r"[A-Za-z0-9_]+(=[A-Za-z0-9_.:/+@-]+)?"


def mount_options(value, path, ctx):
    """A non-empty list of mount options (they are joined with commas into -o)."""
    result = list_of(string(MOUNT_OPTION, "a mount option (name or name=value)"))(value, path, ctx)
    if value == []:
        ctx.error(path, "must name at least one option (defaults, when there is none)")
    return result


REPO_FIELDS = {
    "url": https_url,
    "key_url": https_url,
    "baseurl": string(r"https://[^\s\[\]'\"]+", "an https:// URL"),
    "gpgkey": https_url,
    "file": file_path,
    "key_file": file_path,
    "name": string(r"[A-Za-z0-9_.:-]+", "a repository id"),
    "humanname": string(r"[^\n\r]+", "a one-line name"),
}


def settings_schema(ctx):
    """Checker per top-level key of ``docker:``; keys only defaults.yaml knows: by default."""
    fields = {
        "install": fixed(
            {
                "manage": boolean,
                "source": one_of(INSTALL_SOURCES),
                "pkgs": map_of(one_of(INSTALL_SOURCES), list_of(package_name)),
                "repo": fixed(REPO_FIELDS),
                "python_sdk": boolean,
                "python_sdk_requirement": pip_requirement,
            }
        ),
        "storage_pkgs": list_of(package_name),
        "service": fixed({"name": unit_name, "manage": boolean}),
        "config_file": file_path,
        "config": daemon_config,
        "storage": storage_schema(),
        "registry_config": file_path,
        "registries": map_of(registry_host, options_of("registries", ("username", "password"))),
        "images": map_of(image_reference, options_of("images")),
        "networks": map_of(docker_name, options_of("networks")),
        "volumes": map_of(docker_name, options_of("volumes")),
        "containers": map_of(container_name, container),
        "absent": list_of(docker_name),
    }
    for key, default in ctx.defaults.items():
        fields.setdefault(key, by_default(default))
    return fields


def storage_schema():
    return fixed(
        {
            "mode": one_of(STORAGE_MODES),
            "device": optional(device_path),
            "volume_id": optional(volume_id),
            "volume_group": vg_name,
            "overlay2": fixed(
                {
                    "logical_volume": lv_name,
                    "extents": extents,
                    "filesystem": one_of(FILESYSTEMS),
                    "mountpoint": mountpoint,
                    "mount_options": fixed({fs: mount_options for fs in FILESYSTEMS}),
                }
            ),
            "devicemapper": fixed(
                {
                    "thinpool": lv_name,
                    "metadata": lv_name,
                    "thinpool_extents": extents,
                    "metadata_extents": extents,
                    "profile": profile_name,
                    "autoextend_threshold": integer(50, 100),
                    "autoextend_percent": integer(1, 1000),
                }
            ),
        }
    )


def check_settings(settings, ctx):
    """The whole ``docker:`` map, then what only the sections together can say."""
    if not isinstance(settings, dict):
        ctx.error("docker", f"must be a mapping, not {describe(settings)}")
        return settings
    result = fixed(settings_schema(ctx))(settings, "docker", ctx)
    if not ctx.problems:
        for check in CROSS_CHECKS:
            check(result, ctx)
    return result


def _packages_for_source(settings, ctx):
    install = settings.get("install", {})
    source = install.get("source")
    if install.get("manage") and not install.get("pkgs", {}).get(source):
        ctx.error("docker:install:source", f"{source!r} has no packages for this OS")


def _absent_not_managed(settings, ctx):
    both = sorted(set(settings.get("absent", [])) & set(settings.get("containers", {})))
    for name in both:
        ctx.error(f"docker:absent:{name}", "is also in docker:containers: which one is it?")


def _storage_owns_its_keys(settings, ctx):
    if settings.get("storage", {}).get("mode", "none") == "none":
        return
    for key in STORAGE_MANAGED_KEYS:
        if key in settings.get("config", {}):
            ctx.error(f"docker:config:{key}", "is set by docker:storage:mode; remove it here")


def _mountpoint_is_data_root(settings, ctx):
    storage = settings.get("storage", {})
    if storage.get("mode") != "overlay2":
        return
    data_root = settings.get("config", {}).get("data-root", "/var/lib/docker")
    mount = storage.get("overlay2", {}).get("mountpoint")
    if mount != data_root:
        ctx.error(
            "docker:storage:overlay2:mountpoint",
            f"{mount!r} is not Docker's data root {data_root!r} (docker:config:data-root): "
            "Docker would not use the volume",
        )


def _image_store_fits_storage(settings, ctx):
    features = settings.get("config", {}).get("features") or {}
    mode = settings.get("storage", {}).get("mode")
    if features.get("containerd-snapshotter") is True and mode == "devicemapper":
        ctx.error(
            "docker:config:features:containerd-snapshotter",
            "true needs docker:storage:mode overlay2 (the containerd image store does not use "
            "Docker's devicemapper thin pool)",
        )


def _names_fit_lvm(settings, ctx):
    storage = settings.get("storage", {})
    vg = storage.get("volume_group", "")
    names = [storage.get("overlay2", {}).get("logical_volume", "")]
    names += [storage.get("devicemapper", {}).get(k, "") for k in ("thinpool", "metadata")]
    for name in names:
        if len(vg) + len(name) > 126:
            ctx.error("docker:storage:volume_group", f"{vg}/{name} is longer than LVM allows")


def _volumes_from_known(settings, ctx):
    containers = settings.get("containers", {})
    for name, options in containers.items():
        for index, source in enumerate((options or {}).get("volumes_from") or []):
            source_name = str(source).split(":")[0]
            if source_name == name:
                ctx.error(
                    f"docker:containers:{name}:volumes_from:{index}", "is the container itself"
                )


CROSS_CHECKS = (
    _packages_for_source,
    _absent_not_managed,
    _storage_owns_its_keys,
    _mountpoint_is_data_root,
    _image_store_fits_storage,
    _names_fit_lvm,
    _volumes_from_known,
)
