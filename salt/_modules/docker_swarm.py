"""
Docker swarm for the ``docker`` formula, on the docker SDK (Salt 3008 has no swarm module and
3007's fails on a node already in a swarm).

- ``validate``: the ``swarm:`` pillar model checked and normalized (defaults filled in,
  durations in nanoseconds, sizes in bytes); unknown keys, wrong types and dangling
  references are refused naming the full key path. Defaults live here, once; pillar.example
  documents them.
- ``service_spec`` / ``spec_differences``: the Docker API service spec for a pillar service
  and what differs from a running one (only what pillar manages is compared).
- engine calls the ``docker_swarm`` states and the ``swarm`` runner use: ``node_info``,
  ``init``, ``join``, ``leave``, nodes, networks, versioned secrets/configs, services.
- join tokens: ``sealed_join_tokens`` (on a manager) encrypts the token for one minion's public
  key, the one the master authenticated that minion with; ``join`` (on that minion) opens it
  with the minion's private key. No function returns or logs a token in clear.
"""

import base64
import contextlib
import copy
import difflib
import hashlib
import hmac
import json
import logging
import os
import re
import shlex
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from salt.exceptions import CommandExecutionError

try:
    import docker
    import docker.errors
    import requests

    HAS_DOCKER = True
except ImportError:  # the master needs only validate(); minions need the SDK
    HAS_DOCKER = False

log = logging.getLogger(__name__)

__virtualname__ = "docker_swarm"

MASK = "**********"
SECRET_KEY = "secret"
# Labels this formula puts on what it manages (services, secrets, configs, nodes).
MANAGED_LABEL = "com.docker-hosts.managed"
CLASS_LABEL = "com.docker-hosts.class"
MINION_LABEL = "com.docker-hosts.minion"
NAME_LABEL = "com.docker-hosts.name"
VERSION_LABEL = "com.docker-hosts.version"
FINGERPRINT_LABEL = "com.docker-hosts.fingerprint"
NODE_LABEL_KEYS = "com.docker-hosts.labels"
# Sealed join tokens: format tag, lifetime.
SEAL_FORMAT = "dhswarm1"
SEAL_TTL = 900
SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# Secret/config base names: Docker's rule, leaving room for the ".vN" version suffix.
OBJECT_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,54}[A-Za-z0-9])?$")
IMAGE_RE = re.compile(r"^[a-z0-9][a-z0-9._/:@-]*$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]*$")
DURATION_RE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ns|us|ms|s|m|h))+$")
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)")
DURATION_NS = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)([kmgt]?)i?b?$", re.IGNORECASE)
SIZE_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
ADDRESS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:%\[\]-]*$")
CIDR_RE = re.compile(r"^[0-9.]+/\d{1,2}$")
REQUIRED = object()


def __virtual__():
    return __virtualname__


# --- pillar model: small checkers composed into records --------------------------------------


def _fail(path, message):
    raise CommandExecutionError(f"{path}: {message}")


def _boolean(value, path):
    if not isinstance(value, bool):
        _fail(path, f"{value!r} is not true or false")
    return value


def _integer(low, high):
    def check(value, path):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            _fail(path, f"{value!r} is not an integer from {low} to {high}")
        return value

    return check


def _ratio(value, path):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        _fail(path, f"{value!r} is not a number from 0 to 1")
    return float(value)


def _text(pattern=None, what="a valid value"):
    def check(value, path):
        if not isinstance(value, str) or not value or (pattern and not pattern.match(value)):
            _fail(path, f"{value!r} is not {what}")
        return value

    return check


def _choice(*choices):
    def check(value, path):
        if value not in choices:
            _fail(path, f"{value!r} is not one of {', '.join(choices)}")
        return value

    return check


def _optional(checker):
    def check(value, path):
        return None if value is None else checker(value, path)

    return check


def _duration(value, path):
    """Seconds (a number) or Go-style text (1m30s, 500ms) -> nanoseconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return int(value * 10**9)
    if isinstance(value, str) and DURATION_RE.match(value):
        return int(sum(float(n) * DURATION_NS[unit] for n, unit in DURATION_PART.findall(value)))
    return _fail(path, f"{value!r} is not a duration (seconds, or text like 1m30s, 500ms)")


def _size(value, path):
    """Bytes (a number) or text with a binary unit (64M, 1.5G) -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = SIZE_RE.match(value) if isinstance(value, str) else None
    if not match:
        _fail(path, f"{value!r} is not a size (bytes, or text like 64M, 1G)")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2).lower()])


def _cpus(value, path):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        _fail(path, f"{value!r} is not a positive number of CPUs")
    return int(value * 10**9)


def _argv(value, path):
    """An argument list; text is split like a shell would split words (no shell runs it)."""
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as error:
            _fail(path, f"cannot split {value!r} into arguments: {error}")
    if not isinstance(value, list) or not all(
        isinstance(item, (str, int, float)) and not isinstance(item, bool) for item in value
    ):
        _fail(path, "must be a list of arguments (or one line of text)")
    return [str(item) for item in value]


def _scalar_text(value, path):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    return _fail(path, f"{value!r} must be text or a number")


def _mapping(value_checker, key_checker):
    def check(value, path):
        if value is None:
            return {}
        if not isinstance(value, dict):
            _fail(path, "must be a mapping")
        return {
            key_checker(key, f"{path}:{key}"): value_checker(item, f"{path}:{key}")
            for key, item in value.items()
        }

    return check


def _list(item_checker):
    def check(value, path):
        if value is None:
            return []
        if not isinstance(value, list):
            _fail(path, "must be a list")
        return [item_checker(item, f"{path}:{index}") for index, item in enumerate(value)]

    return check


def _secret_ref(value, path):
    if not isinstance(value, dict) or set(value) != {SECRET_KEY} or not value[SECRET_KEY]:
        _fail(path, "must be {secret: <key of pillar docker_secrets>}")
    return {SECRET_KEY: str(value[SECRET_KEY])}


def _env_value(value, path):
    return _secret_ref(value, path) if isinstance(value, dict) else _scalar_text(value, path)


_labels = _mapping(_scalar_text, _text(LABEL_RE, "a label key"))
_env = _mapping(_env_value, _text(ENV_RE, "an environment variable name"))


def _record(fields):
    """A mapping with exactly ``fields`` ({key: (checker, default)}); defaults filled in."""

    def check(value, path):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            _fail(path, f"must be a mapping with keys {', '.join(fields)}")
        for key in value:
            if key not in fields:
                near = difflib.get_close_matches(str(key), list(fields), n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                _fail(f"{path}:{key}", f"unknown key{hint}; known: {', '.join(fields)}")
        result = {}
        for key, (checker, default) in fields.items():
            if key in value:
                result[key] = checker(value[key], f"{path}:{key}")
            elif default is REQUIRED:
                _fail(f"{path}:{key}", "is required")
            else:  # defaults are written as pillar would be, and normalized the same way
                result[key] = checker(copy.deepcopy(default), f"{path}:{key}")
        return result

    return check


def _short_form(field, record):
    """A record that may also be written as one text value (its ``field``)."""

    def check(value, path):
        return record({field: value} if isinstance(value, str) else value, path)

    return check


# --- the swarm: pillar model ------------------------------------------------------------------


def _manager_count(value, path):
    if value not in (1, 3, 5, 7):
        _fail(path, f"{value!r}: use 1, or an odd 3, 5 or 7 (a quorum needs a majority)")
    return value


_id = _text(NAME_RE, "a minion id")
_name = _text(NAME_RE, "a name ([A-Za-z0-9][A-Za-z0-9_.-], at most 63)")
_object_name = _text(OBJECT_RE, "a secret/config name ([A-Za-z0-9_.-], at most 56)")
_address = _text(ADDRESS_RE, "an address, address:port or interface name")
_port = _integer(1, 65535)

UPDATE_FIELDS = {
    "parallelism": (_integer(0, 10000), 1),
    "delay": (_duration, 0),
    "monitor": (_duration, "5s"),
    "max_failure_ratio": (_ratio, 0.0),
    "order": (_choice("stop-first", "start-first"), "stop-first"),
}
SERVICE_FIELDS = {
    "image": (_text(IMAGE_RE, "an image reference"), REQUIRED),
    "mode": (_choice("replicated", "global"), "replicated"),
    "replicas": (_optional(_integer(0, 10000)), None),
    "command": (_optional(_argv), None),
    "entrypoint": (_optional(_argv), None),
    "env": (_env, {}),
    "workdir": (_optional(_text()), None),
    "user": (_optional(_text()), None),
    "hostname": (_optional(_text()), None),
    "init": (_boolean, False),
    "read_only": (_boolean, False),
    "stop_grace_period": (_duration, "10s"),
    "labels": (_labels, {}),
    "container_labels": (_labels, {}),
    "secrets": (
        _list(
            _short_form(
                "source",
                _record(
                    {
                        "source": (_object_name, REQUIRED),
                        "target": (_optional(_text(OBJECT_RE, "a file name")), None),
                        "uid": (_scalar_text, "0"),
                        "gid": (_scalar_text, "0"),
                        "mode": (_integer(0, 0o777), 0o444),
                    }
                ),
            )
        ),
        [],
    ),
    "configs": (
        _list(
            _short_form(
                "source",
                _record(
                    {
                        "source": (_object_name, REQUIRED),
                        "target": (_optional(_text(re.compile(r"^/.+"), "an absolute path")), None),
                        "uid": (_scalar_text, "0"),
                        "gid": (_scalar_text, "0"),
                        "mode": (_integer(0, 0o777), 0o444),
                    }
                ),
            )
        ),
        [],
    ),
    "networks": (
        _list(
            _short_form("name", _record({"name": (_name, REQUIRED), "aliases": (_list(_name), [])}))
        ),
        [],
    ),
    "endpoint_mode": (_choice("vip", "dnsrr"), "vip"),
    "ports": (
        _list(
            _record(
                {
                    "target": (_port, REQUIRED),
                    "published": (_optional(_port), None),
                    "protocol": (_choice("tcp", "udp", "sctp"), "tcp"),
                    "mode": (_choice("ingress", "host"), "ingress"),
                }
            )
        ),
        [],
    ),
    "constraints": (_list(_text()), []),
    "preferences": (_list(_record({"spread": (_text(), REQUIRED)})), []),
    "max_replicas_per_node": (_integer(0, 10000), 0),
    "resources": (
        _record(
            {
                "limits": (
                    _record(
                        {
                            "cpus": (_optional(_cpus), None),
                            "memory": (_optional(_size), None),
                            "pids": (_optional(_integer(1, 2**31)), None),
                        }
                    ),
                    {},
                ),
                "reservations": (
                    _record({"cpus": (_optional(_cpus), None), "memory": (_optional(_size), None)}),
                    {},
                ),
            }
        ),
        {},
    ),
    "restart_policy": (
        _record(
            {
                "condition": (_choice("none", "on-failure", "any"), "any"),
                "delay": (_duration, "5s"),
                "max_attempts": (_integer(0, 10000), 0),
                "window": (_duration, 0),
            }
        ),
        {},
    ),
    "update_config": (
        _record(
            {**UPDATE_FIELDS, "failure_action": (_choice("pause", "continue", "rollback"), "pause")}
        ),
        {},
    ),
    "rollback_config": (
        _record({**UPDATE_FIELDS, "failure_action": (_choice("pause", "continue"), "pause")}),
        {},
    ),
    "healthcheck": (
        _optional(
            _record(
                {
                    "test": (_argv, REQUIRED),
                    "interval": (_duration, "30s"),
                    "timeout": (_duration, "30s"),
                    "retries": (_integer(0, 1000), 3),
                    "start_period": (_duration, 0),
                }
            )
        ),
        None,
    ),
    "log_driver": (
        _optional(_record({"name": (_name, REQUIRED), "options": (_labels, {})})),
        None,
    ),
}
NETWORK_FIELDS = {
    "driver": (_name, "overlay"),
    "attachable": (_boolean, False),
    "internal": (_boolean, False),
    "encrypted": (_boolean, False),
    "subnet": (_optional(_text(CIDR_RE, "a CIDR subnet")), None),
    "gateway": (_optional(_text(re.compile(r"^[0-9.]+$"), "an IPv4 address")), None),
    "labels": (_labels, {}),
    "options": (_labels, {}),
}
SWARM_FIELDS = {
    "enabled": (_boolean, False),
    "managers": (
        _record({"count": (_manager_count, 1), "prefer": (_list(_id), [])}),
        {},
    ),
    "advertise_addr": (_optional(_address), None),
    "listen_addr": (_address, "0.0.0.0:2377"),
    "default_addr_pool": (_list(_text(CIDR_RE, "a CIDR subnet")), []),
    "subnet_size": (_integer(8, 30), 24),
    "converge_timeout": (_integer(1, 3600), 120),
    "node_labels": (_labels, {}),
    "nodes": (
        _mapping(
            _record(
                {
                    "labels": (_labels, {}),
                    "availability": (_choice("active", "pause", "drain"), "active"),
                }
            ),
            _id,
        ),
        {},
    ),
    "networks": (_mapping(_record(NETWORK_FIELDS), _name), {}),
    "secrets": (_mapping(_secret_ref, _object_name), {}),
    "configs": (_mapping(_record({"data": (_text(), REQUIRED)}), _object_name), {}),
    "services": (_mapping(_record(SERVICE_FIELDS), _name), {}),
    "unlisted_services": (_choice("keep", "remove"), "keep"),
}


def _secret_uses(settings):
    """(key path, docker_secrets key) for every secret value the swarm pillar refers to."""
    for name, ref in settings["secrets"].items():
        yield f"swarm:secrets:{name}", ref[SECRET_KEY]
    for name, service in settings["services"].items():
        for var, value in service["env"].items():
            if isinstance(value, dict):
                yield f"swarm:services:{name}:env:{var}", value[SECRET_KEY]


def _check_service(name, service, settings):
    path = f"swarm:services:{name}"
    if service["mode"] == "global":
        for key in ("replicas", "max_replicas_per_node"):
            if service[key]:
                _fail(f"{path}:{key}", "only valid with mode: replicated")
    elif service["replicas"] is None:
        service["replicas"] = 1
    for kind, key in (("secrets", "source"), ("configs", "source"), ("networks", "name")):
        for index, ref in enumerate(service[kind]):
            if ref[key] not in settings[kind]:
                _fail(
                    f"{path}:{kind}:{index}",
                    f"{ref[key]!r} is not defined under swarm:{kind}",
                )
    for ref in service["secrets"]:
        ref["target"] = ref["target"] or ref["source"]
    for ref in service["configs"]:
        ref["target"] = ref["target"] or f"/{ref['source']}"


def validate(settings=None, secrets=None):
    """
    Check pillar ``swarm`` (this class's swarm) and return it normalized, defaults filled in.
    ``secrets`` (default: pillar ``docker_secrets``) must hold every ``{secret: key}`` used.
    Raises CommandExecutionError naming the full key path of the first problem.
    """
    settings = _record(SWARM_FIELDS)(settings, "swarm")
    if not settings["enabled"]:
        return settings
    if secrets is None:
        secrets = __pillar__.get("docker_secrets") or {}
    for path, key in _secret_uses(settings):
        if key not in secrets:
            _fail(path, f"refers to secret {key!r}, which is not in pillar docker_secrets")
    for name, service in settings["services"].items():
        _check_service(name, service, settings)
    return settings


# --- service spec: pillar -> Docker API, and what differs ---------------------------------------


def managed_labels(class_name, extra=None):
    """Labels marking an object as made by this formula for ``class_name``."""
    return {**(extra or {}), MANAGED_LABEL: "true", CLASS_LABEL: str(class_name)}


def _healthcheck(health):
    if health is None:
        return {}
    test = health["test"]
    if test[0] not in ("CMD", "CMD-SHELL", "NONE"):
        test = ["CMD", *test]
    return {
        "Test": test,
        "Interval": health["interval"],
        "Timeout": health["timeout"],
        "Retries": health["retries"],
        "StartPeriod": health["start_period"],
    }


def _file_refs(refs, ids, kind):
    """Secret/config references; ``ids``: {pillar name: (object id, versioned name)}."""
    entries = []
    for ref in sorted(refs, key=lambda item: item["target"]):
        object_id, object_name = ids[ref["source"]]
        entries.append(
            {
                "File": {
                    "Name": ref["target"],
                    "UID": ref["uid"],
                    "GID": ref["gid"],
                    "Mode": ref["mode"],
                },
                f"{kind}ID": object_id,
                f"{kind}Name": object_name,
            }
        )
    return entries


def _container_spec(service, env, refs):
    return {
        "Image": service["image"],
        "Command": service["entrypoint"] or [],
        "Args": service["command"] or [],
        "Env": [f"{key}={value}" for key, value in sorted(env.items())],
        "Dir": service["workdir"] or "",
        "User": service["user"] or "",
        "Hostname": service["hostname"] or "",
        "Labels": service["container_labels"],
        "Init": service["init"],
        "ReadOnly": service["read_only"],
        "StopGracePeriod": service["stop_grace_period"],
        "Healthcheck": _healthcheck(service["healthcheck"]),
        "Secrets": _file_refs(service["secrets"], refs["secrets"], "Secret"),
        "Configs": _file_refs(service["configs"], refs["configs"], "Config"),
    }


def _resources(resources):
    limits, reservations = resources["limits"], resources["reservations"]
    spec = {
        "Limits": {"NanoCPUs": limits["cpus"] or 0, "MemoryBytes": limits["memory"] or 0},
        "Reservations": {
            "NanoCPUs": reservations["cpus"] or 0,
            "MemoryBytes": reservations["memory"] or 0,
        },
    }
    if limits["pids"]:
        spec["Limits"]["Pids"] = limits["pids"]
    return spec


def _update_config(update):
    return {
        "Parallelism": update["parallelism"],
        "Delay": update["delay"],
        "FailureAction": update["failure_action"],
        "Monitor": update["monitor"],
        "MaxFailureRatio": update["max_failure_ratio"],
        "Order": update["order"],
    }


def _task_template(service, env, refs):
    restart = service["restart_policy"]
    template = {
        "ContainerSpec": _container_spec(service, env, refs),
        "Resources": _resources(service["resources"]),
        "RestartPolicy": {
            "Condition": restart["condition"],
            "Delay": restart["delay"],
            "MaxAttempts": restart["max_attempts"],
            "Window": restart["window"],
        },
        "Placement": {
            "Constraints": service["constraints"],
            "Preferences": [
                {"Spread": {"SpreadDescriptor": p["spread"]}} for p in service["preferences"]
            ],
            "MaxReplicas": service["max_replicas_per_node"],
        },
        "Networks": [
            {"Target": refs["networks"][net["name"]], "Aliases": net["aliases"]}
            for net in service["networks"]
        ],
        "ForceUpdate": 0,
    }
    if service["log_driver"]:
        template["LogDriver"] = {
            "Name": service["log_driver"]["name"],
            "Options": service["log_driver"]["options"],
        }
    return template


def service_spec(name, service, class_name, env=None, refs=None):
    """
    The Docker API spec (``POST /services/create`` body) of pillar service ``name``
    (``service`` as ``validate`` returns it). ``env``: its environment with secret references
    resolved; ``refs``: {"secrets"/"configs": {pillar name: (id, versioned name)},
    "networks": {name: id}}.
    """
    env = service["env"] if env is None else env
    refs = refs or {"secrets": {}, "configs": {}, "networks": {}}
    if service["mode"] == "global":
        mode = {"Global": {}}
    else:
        mode = {"Replicated": {"Replicas": service["replicas"]}}
    return {
        "Name": name,
        "Labels": managed_labels(class_name, service["labels"]),
        "TaskTemplate": _task_template(service, env, refs),
        "Mode": mode,
        "UpdateConfig": _update_config(service["update_config"]),
        "RollbackConfig": _update_config(service["rollback_config"]),
        "EndpointSpec": {
            "Mode": service["endpoint_mode"],
            "Ports": [
                {
                    "Protocol": port["protocol"],
                    "TargetPort": port["target"],
                    "PublishedPort": port["published"] or 0,
                    "PublishMode": port["mode"],
                }
                for port in service["ports"]
            ],
        },
    }


def _empty(value):
    return value is None or value in ({}, [], "", 0, False)


def _list_differences(desired, current, path):
    if len(desired) != len(current):
        return [path]
    found = []
    for index, (want, have) in enumerate(zip(desired, current, strict=True)):
        found.extend(spec_differences(want, have, f"{path}.{index}"))
    return [path] if found else []


def spec_differences(desired, current, path=""):
    """
    Paths where ``current`` (what Docker reports) differs from ``desired``: only keys of
    ``desired`` count (Docker adds its own), and a missing value equals an empty one (Docker
    omits zeros and empty lists).
    """
    if isinstance(desired, dict):
        current = current if isinstance(current, dict) else {}
        found = []
        for key, want in desired.items():
            found.extend(spec_differences(want, current.get(key), f"{path}.{key}".lstrip(".")))
        return found
    if isinstance(desired, list) and isinstance(current, list):
        return _list_differences(desired, current, path)
    if _empty(desired) and _empty(current):
        return []
    return [] if desired == current else [path]


def _lookup(spec, path):
    for key in path.split("."):
        if isinstance(spec, list):
            spec = spec[int(key)] if int(key) < len(spec) else None
        else:
            spec = (spec or {}).get(key)
    return spec


def describe_differences(desired, current):
    """{path: {"old": ..., "new": ...}} for what ``spec_differences`` finds."""
    return {
        path: {"old": _lookup(current, path), "new": _lookup(desired, path)}
        for path in spec_differences(desired, current)
    }


# --- join tokens sealed to one minion ---------------------------------------------------------


def _b64(data):
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _seal_context(recipient, role, cluster_id):
    # Bound into the ciphertext (AES-GCM associated data): a blob sealed for one minion,
    # role and cluster opens for exactly that.
    return f"docker-hosts swarm join|{recipient}|{role}|{cluster_id}".encode()


def _seal(public_key_pem, payload, context):
    """
    Encrypt ``payload`` (bytes) for the holder of the RSA private key matching
    ``public_key_pem``: a fresh AES-256-GCM key encrypts the payload (``context`` as associated
    data), RSA-OAEP-SHA256 wraps that key. Returns printable text.
    """
    public = serialization.load_pem_public_key(
        public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem
    )
    if not isinstance(public, rsa.RSAPublicKey) or public.key_size < 2048:
        raise CommandExecutionError("the recipient's key is not an RSA key of 2048 bits or more")
    key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(12)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    wrapped = public.encrypt(key, oaep)
    sealed = AESGCM(key).encrypt(nonce, payload, context)
    return ".".join([SEAL_FORMAT, _b64(wrapped), _b64(nonce), _b64(sealed)])


def _unseal(private_key_pem, blob, context):
    """Open what ``_seal`` made; CommandExecutionError when it was not sealed for this key
    and ``context`` (without saying more)."""
    try:
        form, wrapped, nonce, sealed = str(blob).split(".")
        if form != SEAL_FORMAT:
            raise ValueError(form)
        private = serialization.load_pem_private_key(private_key_pem, password=None)
        oaep = padding.OAEP(
            mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None
        )
        key = private.decrypt(_unb64(wrapped), oaep)
        return AESGCM(key).decrypt(_unb64(nonce), _unb64(sealed), context)
    except Exception as error:  # every failure looks the same to the caller
        raise CommandExecutionError(
            "cannot open the sealed join token: it was not sealed for this minion, role and "
            "cluster, or it is damaged"
        ) from error


def _minion_private_key():
    with open(os.path.join(__opts__["pki_dir"], "minion.pem"), "rb") as handle:
        return handle.read()


# --- the engine -------------------------------------------------------------------------------


@contextlib.contextmanager
def _engine(action, secret=None):
    """A docker SDK client of this minion's engine (config ``docker.url``), closed on exit.
    Any Docker or connection error inside becomes ``CommandExecutionError("<action>: <what
    Docker said>")`` in one line, ``secret`` masked in it."""
    if not HAS_DOCKER:
        raise CommandExecutionError(f"{action}: the docker Python SDK (>= 7.1) is not installed")
    url = __salt__["config.get"]("docker.url") or None
    try:
        client = (
            docker.APIClient(base_url=url, version="auto", timeout=60)
            if url
            else (docker.from_env(timeout=60).api)
        )
    except docker.errors.DockerException as error:
        raise CommandExecutionError(
            f"{action}: the Docker engine does not answer: {error}"
        ) from error
    try:
        yield client
    except (docker.errors.APIError, requests.exceptions.RequestException) as error:
        if isinstance(error, docker.errors.APIError):
            said = error.explanation or error
        else:
            said = f"the Docker engine does not answer ({type(error).__name__})"
        said = " ".join(str(said).split())
        raise CommandExecutionError(
            f"{action}: {said.replace(secret, MASK) if secret else said}"
        ) from error
    finally:
        client.close()


def node_info():
    """This engine's swarm membership (no secrets): state (inactive, pending, active, error,
    locked), node id and address, whether it is a manager, the cluster id (managers only), the
    managers it knows, and whether live-restore (incompatible with swarm) is on."""
    with _engine("cannot read the engine's swarm state") as api:
        info = api.info()
    swarm = info.get("Swarm") or {}
    return {
        "state": swarm.get("LocalNodeState") or "inactive",
        "node_id": swarm.get("NodeID") or None,
        "node_addr": swarm.get("NodeAddr") or None,
        "is_manager": bool(swarm.get("ControlAvailable")),
        "cluster_id": (swarm.get("Cluster") or {}).get("ID"),
        "managers": sorted(item["Addr"] for item in swarm.get("RemoteManagers") or []),
        "error": swarm.get("Error") or None,
        "live_restore": bool(info.get("LiveRestoreEnabled")),
        "hostname": info.get("Name"),
    }


def init(advertise_addr=None, listen_addr="0.0.0.0:2377", default_addr_pool=None, subnet_size=None):
    """Create a new swarm with this engine as its first manager; returns ``node_info()``.
    Only the ``swarm`` runner decides when (Docker itself refuses on a node in a swarm)."""
    with _engine("swarm init failed") as api:
        api.init_swarm(
            advertise_addr=advertise_addr,
            listen_addr=listen_addr,
            default_addr_pool=default_addr_pool or None,
            subnet_size=subnet_size if default_addr_pool else None,
        )
    return node_info()


def sealed_join_tokens(role, recipients):
    """
    On a manager: this swarm's join token for ``role`` (worker/manager), sealed separately
    for each minion of ``recipients`` ({minion id: its public key, PEM}). Returns {sealed:
    {minion id: blob}, cluster_id, managers}; the token never leaves this function in clear.
    """
    if role not in ("worker", "manager"):
        raise CommandExecutionError(f"role {role!r} is not worker or manager")
    if not isinstance(recipients, dict):
        raise CommandExecutionError("recipients must map minion ids to public keys")
    with _engine("cannot read the swarm's join tokens") as api:
        swarm = api.inspect_swarm()
        managers = [item["Addr"] for item in api.info()["Swarm"].get("RemoteManagers") or []]
    token = swarm["JoinTokens"]["Worker" if role == "worker" else "Manager"]
    payload = json.dumps({"token": token, "not_after": time.time() + SEAL_TTL}).encode()
    sealed = {
        recipient: _seal(public_key, payload, _seal_context(recipient, role, swarm["ID"]))
        for recipient, public_key in recipients.items()
    }
    return {"sealed": sealed, "cluster_id": swarm["ID"], "managers": sorted(managers)}


def _open_token(sealed, role, cluster_id):
    payload = json.loads(
        _unseal(_minion_private_key(), sealed, _seal_context(__opts__["id"], role, cluster_id))
    )
    if time.time() > payload["not_after"]:
        raise CommandExecutionError("the sealed join token has expired: ask the master again")
    return payload["token"]


def join(sealed, role, cluster_id, remote_addrs, addressing=None):
    """Join swarm ``cluster_id`` as ``role`` with a token sealed for this minion
    (``sealed_join_tokens`` on a manager), through the managers at ``remote_addrs``;
    ``addressing``: advertise_addr, listen_addr. Returns ``node_info()``."""
    token = _open_token(sealed, role, cluster_id)
    with _engine("swarm join failed", token) as api:
        api.join_swarm(remote_addrs=list(remote_addrs), join_token=token, **(addressing or {}))
    return node_info()


def leave(force=False):
    """Leave the swarm (``force``: also as the last manager, which ends the swarm)."""
    with _engine("swarm leave failed") as api:
        api.leave_swarm(force=force)
    return node_info()


# --- nodes --------------------------------------------------------------------------------------


def _node_summary(node):
    spec, status = node.get("Spec") or {}, node.get("Status") or {}
    manager = node.get("ManagerStatus") or {}
    return {
        "id": node["ID"],
        "hostname": (node.get("Description") or {}).get("Hostname"),
        "role": spec.get("Role"),
        "availability": spec.get("Availability"),
        "labels": spec.get("Labels") or {},
        "state": status.get("State"),
        "leader": bool(manager.get("Leader")),
        "reachability": manager.get("Reachability"),
    }


def nodes():
    """On a manager: every node of the swarm (id, hostname, role, availability, labels,
    state, leader, reachability)."""
    with _engine("cannot list the swarm's nodes") as api:
        return [_node_summary(node) for node in api.nodes()]


def node(node_id):
    """On a manager: one node as ``nodes`` shows it, or None when the swarm has no such node."""
    return next((item for item in nodes() if item["id"] == node_id), None)


def node_update(node_id, role=None, availability=None, labels=None):
    """On a manager: set a node's role, availability and/or labels (the whole label set)."""
    with _engine(f"cannot update node {node_id}") as api:
        current = api.inspect_node(node_id)
        spec = dict(current["Spec"])
        for key, value in (("Role", role), ("Availability", availability), ("Labels", labels)):
            if value is not None:
                spec[key] = value
        api.update_node(node_id, current["Version"]["Index"], spec)
    return node(node_id)


def node_remove(node_id):
    """On a manager: remove a node that left or is down."""
    with _engine(f"cannot remove node {node_id}") as api:
        api.remove_node(node_id, force=True)
    return True


def drain(node_id, class_name, timeout=120):
    """On a manager: demote node ``node_id`` (if a manager) and drain it; wait until the swarm
    runs none of its tasks there and the class's services are back at full strength. Returns
    {demoted, drained, services: {service: "running/desired (outcome)"}, stuck}."""
    demoted = node(node_id)["role"] == "manager"
    if demoted:
        node_update(node_id, role="worker")
    node_update(node_id, availability="drain")
    deadline = time.monotonic() + timeout
    while _node_tasks(node_id) and time.monotonic() < deadline:
        time.sleep(1)
    services = {}
    for name in managed_services(class_name):
        status = service_wait(name, timeout=max(1, deadline - time.monotonic()))
        services[name] = f"{status['running']}/{status['desired']} ({status['outcome']})"
    stuck = {name: state for name, state in services.items() if "(converged)" not in state}
    return {
        "demoted": demoted,
        "drained": not _node_tasks(node_id),
        "services": services,
        "stuck": stuck,
    }


def _node_tasks(node_id):
    with _engine(f"cannot list the tasks of node {node_id}") as api:
        return api.tasks(filters={"node": node_id, "desired-state": "running"})


# --- networks -------------------------------------------------------------------------------------


def network(name):
    """On a manager: swarm network ``name`` (exactly that name, never an ID prefix): id,
    driver, scope, attachable, internal, encrypted, subnet, gateway, labels, options; or None."""
    with _engine(f"cannot read network {name}") as api:
        found = [item for item in api.networks(names=[name]) if item["Name"] == name]
        if not found:
            return None
        details = api.inspect_network(found[0]["Id"])
    options = dict(details.get("Options") or {})
    pools = (details.get("IPAM") or {}).get("Config") or [{}]
    return {
        "id": details["Id"],
        "driver": details.get("Driver"),
        "scope": details.get("Scope"),
        "attachable": bool(details.get("Attachable")),
        "internal": bool(details.get("Internal")),
        "encrypted": "encrypted" in options,
        "subnet": pools[0].get("Subnet"),
        "gateway": pools[0].get("Gateway"),
        "labels": details.get("Labels") or {},
        "options": {key: value for key, value in options.items() if key != "encrypted"},
    }


def network_create(name, settings, class_name):
    """On a manager: create swarm network ``name`` from its pillar settings."""
    options = dict(settings["options"])
    if settings["encrypted"]:
        options["encrypted"] = ""
    ipam = None
    if settings["subnet"]:
        pool = docker.types.IPAMPool(subnet=settings["subnet"], gateway=settings["gateway"])
        ipam = docker.types.IPAMConfig(pool_configs=[pool])
    with _engine(f"cannot create network {name}") as api:
        api.create_network(
            name,
            driver=settings["driver"],
            options=options,
            ipam=ipam,
            check_duplicate=True,
            internal=settings["internal"],
            labels=managed_labels(class_name, settings["labels"]),
            attachable=settings["attachable"],
            scope="swarm",
        )
    return network(name)


# --- secrets and configs: immutable, so versioned -------------------------------------------------


def _fingerprint(data, salt=None):
    # A salted, slow hash: the fingerprint sits in a label and must not let anyone test
    # guesses of the value cheaply.
    salt = salt or os.urandom(16)
    return f"scrypt:{_b64(salt)}:{_b64(hashlib.scrypt(data, salt=salt, **SCRYPT))}"


def fingerprint_matches(fingerprint, data):
    """Whether ``data`` (bytes) is what ``fingerprint`` (a version's label) was made from."""
    try:
        kind, salt, _ = str(fingerprint).split(":")
    except ValueError:
        return False
    return kind == "scrypt" and hmac.compare_digest(_fingerprint(data, _unb64(salt)), fingerprint)


def _objects(api, kind, label):
    if kind not in ("secret", "config"):
        raise CommandExecutionError(f"kind {kind!r} is not secret or config")
    return getattr(api, f"{kind}s")(filters={"label": [label]})


def versions(kind, name):
    """On a manager: the versions of secret/config ``name`` this formula made, oldest first:
    [{id, name (versioned), version, fingerprint}] (never the data)."""
    with _engine(f"cannot list the versions of {kind} {name}") as api:
        found = _objects(api, kind, f"{NAME_LABEL}={name}")
    entries = []
    for item in found:
        labels = item["Spec"].get("Labels") or {}
        if labels.get(MANAGED_LABEL) == "true" and labels.get(VERSION_LABEL, "").isdigit():
            entries.append(
                {
                    "id": item["ID"],
                    "name": item["Spec"]["Name"],
                    "version": int(labels[VERSION_LABEL]),
                    "fingerprint": labels.get(FINGERPRINT_LABEL, ""),
                }
            )
    return sorted(entries, key=lambda entry: entry["version"])


def create_version(kind, name, data, class_name, version):
    """On a manager: create ``<name>.v<version>`` holding ``data`` (bytes); returns its id."""
    labels = {NAME_LABEL: name, VERSION_LABEL: str(version), FINGERPRINT_LABEL: _fingerprint(data)}
    versioned = f"{name}.v{version}"
    with _engine(f"cannot create {kind} {versioned}") as api:
        return getattr(api, f"create_{kind}")(
            versioned, data, labels=managed_labels(class_name, labels)
        )["ID"]


def remove_object(kind, object_id):
    """On a manager: remove a secret/config by id (Docker refuses while a service uses it)."""
    with _engine(f"cannot remove {kind} {object_id}") as api:
        getattr(api, f"remove_{kind}")(object_id)
    return True


def managed_objects(kind, class_name):
    """On a manager: {pillar name: [versions]} of every secret/config made for the class."""
    with _engine(f"cannot list the {kind}s of class {class_name}") as api:
        found = _objects(api, kind, f"{CLASS_LABEL}={class_name}")
    names = {(item["Spec"].get("Labels") or {}).get(NAME_LABEL) for item in found}
    return {name: versions(kind, name) for name in sorted(names - {None})}


def objects_in_use(kind):
    """On a manager: ids of the secrets/configs any service refers to."""
    with _engine("cannot list the services") as api:
        services = api.services()
    used = set()
    for item in services:
        spec = item["Spec"]["TaskTemplate"].get("ContainerSpec") or {}
        used.update(
            ref[f"{kind.capitalize()}ID"] for ref in spec.get(f"{kind.capitalize()}s") or []
        )
    return sorted(used)


# --- services -------------------------------------------------------------------------------------


def _service_id(api, name):
    """The id of the service named exactly ``name`` (Docker's name filter matches prefixes
    and an unknown name resolves as an ID prefix), or None."""
    found = [
        item["ID"] for item in api.services(filters={"name": name}) if item["Spec"]["Name"] == name
    ]
    return found[0] if found else None


def service(name):
    """On a manager: ``docker service inspect`` of the service named exactly ``name``, or None."""
    with _engine(f"cannot read service {name}") as api:
        service_id = _service_id(api, name)
        return api.inspect_service(service_id) if service_id else None


def _service_arguments(spec):
    return {
        "task_template": spec["TaskTemplate"],
        "name": spec["Name"],
        "labels": spec["Labels"],
        "mode": spec["Mode"],
        "update_config": spec["UpdateConfig"],
        "rollback_config": spec["RollbackConfig"],
        "endpoint_spec": spec["EndpointSpec"],
    }


def service_create(spec):
    """On a manager: create a service from a full spec (``service_spec``); returns its id."""
    with _engine(f"cannot create service {spec['Name']}") as api:
        return api.create_service(**_service_arguments(spec))["ID"]


def service_update(service_id, version, spec):
    """On a manager: replace a service's spec with ``spec`` (a rolling update when the task
    template changes, following the spec's UpdateConfig)."""
    with _engine(f"cannot update service {spec['Name']}") as api:
        api.update_service(
            service_id, version, fetch_current_spec=False, **_service_arguments(spec)
        )


def service_remove(name):
    """On a manager: remove the service named exactly ``name`` (its tasks stop)."""
    with _engine(f"cannot remove service {name}") as api:
        service_id = _service_id(api, name)
        return bool(service_id) and api.remove_service(service_id)


def managed_services(class_name):
    """On a manager: names of the services this formula made for ``class_name``."""
    with _engine(f"cannot list the services of class {class_name}") as api:
        found = api.services(filters={"label": f"{CLASS_LABEL}={class_name}"})
    return sorted(
        item["Spec"]["Name"]
        for item in found
        if (item["Spec"].get("Labels") or {}).get(MANAGED_LABEL) == "true"
    )


def _task_spec(template):
    # A task carries a copy of the service's task template, less the runtime name.
    return {key: value for key, value in template.items() if key != "Runtime"}


def _rollout(api, service_id):
    """Where a service stands: its update state and how many tasks run its current spec."""
    current = api.inspect_service(service_id)
    template = _task_spec(current["Spec"]["TaskTemplate"])
    tasks = api.tasks(filters={"service": service_id, "desired-state": "running"})
    running = [
        task
        for task in tasks
        if task["Status"]["State"] == "running" and _task_spec(task["Spec"]) == template
    ]
    replicated = (current["Spec"]["Mode"].get("Replicated") or {}).get("Replicas")
    update = current.get("UpdateStatus") or {}
    return {
        "update": update.get("State"),
        "message": update.get("Message", ""),
        "running": len(running),
        "desired": len(tasks) if replicated is None else replicated,
        "nodes": sorted({task["NodeID"] for task in running}),
    }


def _rollout_done(status, updated):
    if updated and status["update"] in ("updating", "rollback_started"):
        return False
    if updated and status["update"] in ("paused", "rollback_paused"):
        return True
    return status["running"] >= status["desired"]


def _outcome(status, updated):
    if not updated:
        return "converged"
    if status["update"] == "rollback_completed":
        return "rolled_back"
    if status["update"] in ("paused", "rollback_paused"):
        return "paused"
    return "converged"


def service_wait(name, timeout=120, updated=False):
    """
    On a manager: wait until service ``name`` runs its desired number of tasks on its current
    spec (and, after an update, the update has finished). Returns {outcome (converged,
    rolled_back, paused, timeout), update, message, running, desired, nodes, seconds}.
    """
    started = time.monotonic()
    with _engine(f"cannot follow service {name}") as api:
        service_id = _service_id(api, name)
        if service_id is None:
            raise CommandExecutionError(f"service {name} does not exist")
        status = _rollout(api, service_id)
        while not _rollout_done(status, updated) and time.monotonic() - started < timeout:
            time.sleep(0.5)
            status = _rollout(api, service_id)
        done = _rollout_done(status, updated)
        status["outcome"] = _outcome(status, updated) if done else "timeout"
        if status["outcome"] != "converged":
            status["message"] = f"{status['message']}; {_last_task_error(api, service_id)}".lstrip(
                "; "
            )
    status["seconds"] = round(time.monotonic() - started, 1)
    return status


def _last_task_error(api, service_id):
    """Why the latest failed task of a service failed (Docker's own words)."""
    failed = [
        task
        for task in api.tasks(filters={"service": service_id})
        if task["Status"]["State"] in ("failed", "rejected")
    ]
    if not failed:
        return "no failed task"
    latest = max(failed, key=lambda task: task["Status"]["Timestamp"])
    return f"last failed task: {latest['Status'].get('Err') or latest['Status']['State']}"
