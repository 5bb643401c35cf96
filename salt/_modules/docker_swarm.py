"""
Docker swarm per class on the docker SDK (Salt 3008 has no swarm module, 3007's fails on a
node already in a swarm), driven by the ``swarm`` runner (docs/swarm.md): ``validate`` (pillar
checked with schema.yaml by the checker kit, over defaults.yaml, built with the SDK's own
types), ``converge`` (the
cluster, on a manager), membership (``node_info``, ``init``, ``join``, ``leave``, ``nodes``,
``node_update``, ``node_remove``, ``drain``). Objects are found by exact name, never by an ID
prefix; every Docker or engine error is one line; a join token leaves a manager only sealed
for one minion's key, and secret values never appear in what a function returns.
"""

import base64
import contextlib
import copy
import hashlib
import hmac
import json
import logging
import os
import re
import shlex
import time

import salt.pillar
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from salt.exceptions import CommandExecutionError

try:
    import docker
    import requests

    HAS_DOCKER = True
except ImportError:  # said when an engine or a check needs it
    HAS_DOCKER = False

log = logging.getLogger(__name__)

__virtualname__ = "docker_swarm"

MASK = "**********"
# Labels on what this formula makes (services, networks, secrets, configs) and on nodes.
MANAGED_LABEL = "com.docker-hosts.managed"
CLASS_LABEL = "com.docker-hosts.class"
MINION_LABEL = "com.docker-hosts.minion"
OWN_LABELS = "com.docker-hosts.labels"  # the node labels set from pillar, to remove stale ones
NAME_LABEL = "com.docker-hosts.name"
VERSION_LABEL = "com.docker-hosts.version"
FINGERPRINT_LABEL = "com.docker-hosts.fingerprint"
SEAL_FORMAT, SEAL_TTL = "dhswarm1", 900  # sealed join tokens: format tag, lifetime (s)
SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}  # fingerprints of secret values


def __virtual__():
    return __virtualname__


# --- pillar swarm: checked with schema.yaml, defaults.yaml merged under it -----------------------

# The part of defaults.yaml under each entry of a mapping / item of a list, by key; a list item
# may be its first field alone (secrets: [api_token]).
ENTRIES = {"nodes": "node", "networks": "network", "configs": "config", "services": "service"}
ITEMS = {"secrets": "file", "configs": "file", "networks": "attachment", "ports": "port"}
ITEMS["preferences"] = "preference"
DURATIONS = {"stop_grace_period", "delay", "monitor", "window", "interval", "timeout"}
DURATIONS.add("start_period")
NS = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _nanoseconds(value):
    """Seconds (a number) or Go-style text (1m30s, 500ms) -> nanoseconds (0: not a duration,
    which the schema refuses)."""
    if _number(value):
        return int(value * 10**9)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)", value if isinstance(value, str) else "")
    return int(sum(float(number) * NS[unit] for number, unit in parts))


def _merged(value, default, key, parts):
    """``value`` over ``default`` (of defaults.yaml ``parts``, under ``key``) as the converge
    reads it: each entry and item over its part, durations in nanoseconds, numbers as the
    default's kind, string maps' values as strings. Where the schema refused a value's shape,
    the default's shape stands in (the refusal says why)."""
    if key == "healthcheck" and isinstance(value, dict):
        default = parts["healthcheck"]
    if isinstance(default, (dict, list)) and not isinstance(value, type(default)):
        value = type(default)()
    if isinstance(default, dict) and default:
        given = {k: value.get(k, copy.deepcopy(fallback)) for k, fallback in default.items()}
        return {k: _merged(given[k], fallback, k, parts) for k, fallback in default.items()}
    if isinstance(default, dict):  # entries over their part; a string map's values as strings
        part, is_ref = parts.get(ENTRIES.get(key)), __utils__["dockerhosts_secrets.is_ref"]
        return {
            name: _merged(item, part, None, parts) if part else item if is_ref(item) else str(item)
            for name, item in value.items()
        }
    if isinstance(default, list) and key in ITEMS:
        part = parts[ITEMS[key]]
        first = next(iter(part))
        items = ({first: item} if isinstance(item, str) else item for item in value)
        return [_merged(item, part, None, parts) for item in items]
    if key in DURATIONS:
        return _nanoseconds(value)
    convert = _number(value) and isinstance(default, (str, float))
    return type(default)(value) if convert else value


def _memory(value):
    with contextlib.suppress(docker.errors.DockerException, TypeError, ValueError):
        if not isinstance(value, (str, int)) or docker.utils.parse_bytes(value) >= 6 * 2**20:
            return None  # other kinds: the schema's; 6M: Docker's least memory limit
    return f"{value!r} is not a size of 6M or more (bytes, or text like 64M, 1G)"


def _names(swarm):
    """Nodes are named by minion id, networks and services by Docker's rule."""
    rules = {"nodes": "node_name", "networks": "docker_name", "services": "docker_name"}
    return [
        f"swarm:{kind}:{name}: {problem}"
        for kind, rule in rules.items()
        for name in swarm[kind]
        if (problem := __utils__[f"dockerhosts_names.{rule}_problem"](name))
    ]


def _references(path, service, swarm):
    """A service's secrets, configs and networks must be the swarm's; a file's target defaults
    to the secret's name, /<the config's name>."""
    found = []
    for kind, key in (("secrets", "source"), ("configs", "source"), ("networks", "name")):
        for index, ref in enumerate(service[kind]):
            if not isinstance(ref[key], str):  # refused by the schema
                continue
            if ref[key] not in swarm[kind]:
                found.append(f"{path}:{kind}:{index}: {ref[key]!r} is not under swarm:{kind}")
            elif kind != "networks":
                ref["target"] = ref["target"] or ("/" if kind == "configs" else "") + ref[key]
    return found


def _service_problems(path, service, swarm, given, problems):
    found = _references(path, service, swarm)
    if service["mode"] == "global" and isinstance(given, dict) and "replicas" in given:
        found.append(f"{path}:replicas: only valid with mode: replicated")
    if service["endpoint_mode"] == "dnsrr" and any(
        p["mode"] == "ingress" for p in service["ports"]
    ):
        found.append(f"{path}:ports: with endpoint_mode dnsrr, Docker publishes in mode host only")
    for key in ("mem_limit", "mem_reservation"):
        if _memory(service["resources"][key]):
            found.append(f"{path}:resources:{key}: {_memory(service['resources'][key])}")
    refused = {
        p[len(path) + 1 :].split(":")[0] for p in problems + found if p.startswith(f"{path}:")
    }
    for key, build in SPEC_PARTS.items():  # what the SDK's types refuse, by the key they read
        if refused & SPEC_READS.get(key, {key}):
            continue  # the schema refused a value it reads
        try:
            build(service, {"networks": {}})
        except (docker.errors.DockerException, TypeError, ValueError) as error:
            found.append(f"{path}:{key}: {' '.join(str(error).split())}")
    return found


def validate(settings=None, defaults=None, schema=None, secrets=None):
    """
    Pillar ``swarm`` (a class's swarm) checked with ``schema`` (salt/docker/swarm/schema.yaml,
    through the checker kit), merged over ``defaults`` (defaults.yaml) and its services built
    with the SDK's types; ``secrets`` (default: pillar docker_secrets) must hold every
    ``{secret: key}`` it uses. Returns the settings; CommandExecutionError listing every
    problem, each with its full key path.
    """
    if not HAS_DOCKER:
        raise CommandExecutionError("the docker Python SDK (>= 7.1) is not installed")
    settings = {} if settings is None else settings
    problems = __utils__["dockerhosts_checks.validate"](settings, schema or {}, "swarm")
    swarm = _merged(settings, defaults["swarm"], "swarm", defaults)
    problems += _names(swarm)
    if swarm["enabled"]:
        secrets = __pillar__.get("docker_secrets") or {} if secrets is None else secrets
        uses = {f"swarm:secrets:{name}": ref for name, ref in swarm["secrets"].items()}
        for name, service in swarm["services"].items():
            path, given = f"swarm:services:{name}", settings["services"][name]
            problems += _service_problems(path, service, swarm, given, problems)
            env = service["environment"].items()
            uses.update({f"{path}:environment:{k}": v for k, v in env if isinstance(v, dict)})
        problems += [
            f"{path}: refers to {ref['secret']!r}, which is not in docker_secrets"
            for path, ref in uses.items()
            if __utils__["dockerhosts_secrets.is_ref"](ref) and ref["secret"] not in secrets
        ]
    if problems:
        raise CommandExecutionError("; ".join(problems))
    return swarm


# --- a service, built with the SDK's types; what differs from Docker's ------------------------


def managed_labels(class_name, extra=None):
    """Labels marking an object as made by this formula for ``class_name``."""
    return {**(extra or {}), MANAGED_LABEL: "true", CLASS_LABEL: str(class_name)}


def _health(service):
    health = service["healthcheck"]
    if not health:
        return None
    test = health["test"]
    if isinstance(test, list) and test[:1] not in (["CMD"], ["CMD-SHELL"], ["NONE"]):
        test = ["CMD", *test]
    return docker.types.Healthcheck(**{**health, "test": test})


def _resources(service):
    found = {key: value for key, value in service["resources"].items() if value is not None}
    for key, value in found.items():
        found[key] = (
            int(value * 10**9) if key.startswith("cpu") else docker.utils.parse_bytes(value)
        )
    return docker.types.Resources(**found)


def _port(port):
    return {
        "Protocol": port["protocol"],
        "TargetPort": port["target"],
        "PublishedPort": port["published"] or 0,
        "PublishMode": port["mode"],
    }


# Each part of a service's spec, by the pillar key it reads (``validate`` builds them too), and
# the other keys it reads.
SPEC_READS = {"mode": {"mode", "replicas"}, "ports": {"ports", "endpoint_mode"}}
SPEC_READS["preferences"] = {"preferences", "constraints", "max_replicas_per_node"}
SPEC_READS["log_driver"] = {"log_driver", "log_opt"}
SPEC_PARTS = {
    "mode": lambda s, _: docker.types.ServiceMode(
        s["mode"], s["replicas"] if s["mode"] == "replicated" else None
    ),
    "update_config": lambda s, _: docker.types.UpdateConfig(**s["update_config"]),
    "rollback_config": lambda s, _: docker.types.RollbackConfig(**s["rollback_config"]),
    "restart_policy": lambda s, _: docker.types.RestartPolicy(**s["restart_policy"]),
    "resources": lambda s, _: _resources(s),
    "healthcheck": lambda s, _: _health(s),
    "preferences": lambda s, _: docker.types.Placement(
        constraints=s["constraints"],
        preferences=[("spread", p["spread"]) for p in s["preferences"]],
        maxreplicas=s["max_replicas_per_node"],
    ),
    "ports": lambda s, _: docker.types.EndpointSpec(
        s["endpoint_mode"], list(map(_port, s["ports"]))
    ),
    "log_driver": lambda s, _: (
        s["log_driver"] and docker.types.DriverConfig(s["log_driver"], s["log_opt"])
    ),
    "networks": lambda s, refs: [
        docker.types.NetworkAttachmentConfig(
            refs["networks"].get(n["name"], n["name"]), n["aliases"]
        )
        for n in s["networks"]
    ],
}


def _files(kind, service, refs):
    reference = docker.types.SecretReference if kind == "secrets" else docker.types.ConfigReference
    return [
        reference(*refs[kind][ref["source"]], ref["target"], ref["uid"], ref["gid"], ref["mode"])
        for ref in sorted(service[kind], key=lambda item: item["target"])
    ]


def service_spec(name, service, class_name, environment, refs):
    """
    The Docker API spec of pillar service ``name`` (as ``validate`` returns it), built with the
    SDK's types. ``environment``: its environment, secrets resolved; ``refs``: {"secrets" /
    "configs": {pillar name: (id, versioned name)}, "networks": {name: id}}.
    """
    part = {key: build(service, refs) for key, build in SPEC_PARTS.items()}
    argv = {
        k: shlex.split(service[k]) if isinstance(service[k], str) else service[k]
        for k in ("command", "entrypoint")
    }
    container = docker.types.ContainerSpec(
        service["image"],
        command=argv["entrypoint"],
        args=argv["command"],
        hostname=service["hostname"],
        env=dict(sorted(environment.items())),
        workdir=service["working_dir"],
        user=service["user"],
        labels=service["container_labels"],
        stop_grace_period=service["stop_grace_period"],
        secrets=_files("secrets", service, refs),
        read_only=service["read_only"],
        healthcheck=part["healthcheck"],
        configs=_files("configs", service, refs),
        init=service["init"],
    )
    template = docker.types.TaskTemplate(
        container,
        resources=part["resources"],
        restart_policy=part["restart_policy"],
        placement=part["preferences"],
        log_driver=part["log_driver"],
        networks=part["networks"],
    )
    return {
        "Name": name,
        "Labels": managed_labels(class_name, service["labels"]),
        "TaskTemplate": template,
        "Mode": part["mode"],
        "UpdateConfig": part["update_config"],
        "RollbackConfig": part["rollback_config"],
        "EndpointSpec": part["ports"],
    }


def _empty(value):
    return value is None or value in ({}, [], "", 0, False)


def spec_differences(desired, current, path=""):
    """
    Paths where ``current`` (what Docker reports) differs from ``desired``: only keys of
    ``desired`` count (Docker adds its own), keys match whatever their case (the SDK writes
    some in lower case), and a missing value equals an empty one (Docker omits zeros).
    """
    if isinstance(desired, dict):
        current = {k.lower(): v for k, v in current.items()} if isinstance(current, dict) else {}
        return [
            found
            for key, want in desired.items()
            for found in spec_differences(
                want, current.get(key.lower()), f"{path}.{key}".lstrip(".")
            )
        ]
    if isinstance(desired, list) and isinstance(current, list):
        if len(desired) != len(current):
            return [path]
        pairs = zip(desired, current, strict=True)
        return [path] if any(spec_differences(want, have) for want, have in pairs) else []
    return [] if desired == current or (_empty(desired) and _empty(current)) else [path]


def _lookup(spec, path):
    for key in path.split("."):
        spec = {k.lower(): v for k, v in (spec or {}).items()}.get(key.lower())
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


OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def _seal(public_key_pem, payload, context):
    """``payload`` (bytes) for the holder of the RSA key of ``public_key_pem`` alone: a fresh
    AES-256-GCM key encrypts it (``context`` as associated data), RSA-OAEP-SHA256 wraps the key."""
    public = serialization.load_pem_public_key(
        public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem
    )
    if not isinstance(public, rsa.RSAPublicKey) or public.key_size < 2048:
        raise CommandExecutionError("the recipient's key is not an RSA key of 2048 bits or more")
    key, nonce = AESGCM.generate_key(bit_length=256), os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, payload, context)
    return ".".join([SEAL_FORMAT, _b64(public.encrypt(key, OAEP)), _b64(nonce), _b64(sealed)])


def _unseal(private_key_pem, blob, context):
    """Open what ``_seal`` made; one and the same error whatever is wrong."""
    try:
        form, wrapped, nonce, sealed = str(blob).split(".")
        if form != SEAL_FORMAT:
            raise ValueError(form)
        private = serialization.load_pem_private_key(private_key_pem, password=None)
        key = private.decrypt(_unb64(wrapped), OAEP)
        return AESGCM(key).decrypt(_unb64(nonce), _unb64(sealed), context)
    except Exception as error:  # every failure looks the same to the caller
        raise CommandExecutionError(
            "cannot open the sealed join token: it was not sealed for this minion, role and "
            "cluster, or it is damaged"
        ) from error


def _open_token(sealed, role, cluster_id):
    with open(os.path.join(__opts__["pki_dir"], "minion.pem"), "rb") as handle:
        context = _seal_context(__opts__["id"], role, cluster_id)
        payload = json.loads(_unseal(handle.read(), sealed, context))
    if time.time() > payload["not_after"]:
        raise CommandExecutionError("the sealed join token has expired: ask the master again")
    return payload["token"]


# --- the engine -------------------------------------------------------------------------------


def _said(error):
    """What Docker said (an API error), in one line; the engine not answering (a connection)."""
    if isinstance(error, docker.errors.APIError):
        return " ".join(str(error.explanation or error).split())
    return "the Docker engine does not answer"


@contextlib.contextmanager
def _engine(action, secret=None):
    """A docker SDK client of this minion's engine (config ``docker.url``), closed on exit; a
    Docker or connection error inside is ``CommandExecutionError("<action>: <what Docker
    said>")`` in one line, ``secret`` masked."""
    if not HAS_DOCKER:
        raise CommandExecutionError(f"{action}: the docker Python SDK (>= 7.1) is not installed")
    try:
        url = __salt__["config.get"]("docker.url") or None
        api = (
            docker.APIClient(base_url=url, version="auto", timeout=60)
            if url
            else (docker.from_env(timeout=60).api)
        )
    except docker.errors.DockerException as error:
        raise CommandExecutionError(f"{action}: the Docker engine does not answer") from error
    try:
        yield api
    except (docker.errors.APIError, requests.exceptions.RequestException) as error:
        said = _said(error)
        raise CommandExecutionError(
            f"{action}: {said.replace(secret, MASK) if secret else said}"
        ) from error
    finally:
        api.close()


def node_info():
    """This engine's swarm membership (no secrets): state (inactive, pending, active, error,
    locked), node id and address, whether it is a manager, the cluster id (managers only), the
    managers it knows, whether live-restore (which swarm refuses) is on."""
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
        "live_restore": bool(info.get("LiveRestoreEnabled")),
    }


def init(advertise_addr=None, listen_addr="0.0.0.0:2377", default_addr_pool=None, subnet_size=24):
    """Create a new swarm with this engine as its first manager (only the ``swarm`` runner
    decides when; Docker refuses on an engine in a swarm); returns ``node_info()``."""
    with _engine("swarm init failed") as api:
        pool = {"default_addr_pool": default_addr_pool, "subnet_size": subnet_size}
        api.init_swarm(advertise_addr, listen_addr, **(pool if default_addr_pool else {}))
    return node_info()


def sealed_join_tokens(role, recipients):
    """On a manager: the join token for ``role`` (worker/manager) sealed for each minion of
    ``recipients`` ({minion id: its public key}) alone: {sealed: {minion: blob}, cluster_id,
    managers}. The token never leaves this function in clear."""
    if role not in ("worker", "manager") or not isinstance(recipients, dict):
        raise CommandExecutionError("usage: sealed_join_tokens worker|manager {minion: key}")
    with _engine("cannot read the swarm's join tokens") as api:
        swarm, info = api.inspect_swarm(), api.info()
    token = swarm["JoinTokens"][role.capitalize()]
    payload = json.dumps({"token": token, "not_after": time.time() + SEAL_TTL}).encode()
    return {
        "sealed": {
            minion: _seal(key, payload, _seal_context(minion, role, swarm["ID"]))
            for minion, key in recipients.items()
        },
        "cluster_id": swarm["ID"],
        "managers": sorted(item["Addr"] for item in info["Swarm"].get("RemoteManagers") or []),
    }


def join(sealed, role, cluster_id, remote_addrs, addressing=None):
    """Join swarm ``cluster_id`` as ``role`` with a token sealed for this minion, through the
    managers at ``remote_addrs``; ``addressing``: advertise_addr, listen_addr."""
    token = _open_token(sealed, role, cluster_id)
    with _engine("swarm join failed", token) as api:
        api.join_swarm(list(remote_addrs), token, **(addressing or {}))
    return node_info()


def leave(force=False):
    """Leave the swarm (``force``: also as the last manager, which ends the swarm)."""
    with _engine("swarm leave failed") as api:
        api.leave_swarm(force=force)
    return node_info()


# --- nodes (on a manager) -----------------------------------------------------------------------


def nodes():
    """Every node of the swarm: id, hostname, role, availability, labels, state, reachability."""
    with _engine("cannot list the swarm's nodes") as api:
        found = api.nodes()
    return [
        {
            "id": item["ID"],
            "hostname": item["Description"].get("Hostname"),
            "role": item["Spec"].get("Role"),
            "availability": item["Spec"].get("Availability"),
            "labels": item["Spec"].get("Labels") or {},
            "state": item["Status"].get("State"),
            "reachability": (item.get("ManagerStatus") or {}).get("Reachability"),
        }
        for item in found
    ]


def node(node_id):
    """One node as ``nodes`` shows it, or None."""
    return next((item for item in nodes() if item["id"] == node_id), None)


def node_update(node_id, **spec):
    """Set a node's role, availability and/or labels (the whole label set)."""
    with _engine(f"cannot update node {node_id}") as api:
        current = api.inspect_node(node_id)
        changed = {key.capitalize(): value for key, value in spec.items() if value is not None}
        api.update_node(node_id, current["Version"]["Index"], {**current["Spec"], **changed})
    return node(node_id)


def node_remove(node_id):
    """Remove a node that left or is down from the swarm's node list."""
    with _engine(f"cannot remove node {node_id}") as api:
        api.remove_node(node_id, force=True)
    return True


def drain(node_id, class_name, timeout=120):
    """Demote (if a manager) and drain a node; wait until none of its tasks runs there and the
    class's services run in full elsewhere: {demoted, drained, services, stuck}."""
    demoted = node(node_id)["role"] == "manager"
    node_update(node_id, role="worker" if demoted else None, availability="drain")
    deadline = time.monotonic() + timeout
    with _engine(f"cannot drain node {node_id}") as api:
        running = {"node": node_id, "desired-state": "running"}
        while api.tasks(filters=running) and time.monotonic() < deadline:
            time.sleep(1)
        drained = not api.tasks(filters=running)
        found = api.services(filters={"label": f"{CLASS_LABEL}={class_name}"})
    services = {}
    for name in sorted(item["Spec"]["Name"] for item in found):
        status = service_wait(name, timeout=max(1, deadline - time.monotonic()))
        services[name] = f"{status['running']}/{status['desired']} ({status['outcome']})"
    stuck = {name: state for name, state in services.items() if "(converged)" not in state}
    return {"demoted": demoted, "drained": drained, "services": services, "stuck": stuck}


# --- the class's swarm, converged from a manager ---------------------------------------------


def _fingerprint(data, salt=None):
    # A salted, slow hash: it sits in a label and must not let anyone test guesses cheaply.
    salt = salt or os.urandom(16)
    return f"scrypt:{_b64(salt)}:{_b64(hashlib.scrypt(data, salt=salt, **SCRYPT))}"


def _fingerprint_matches(fingerprint, data):
    kind, _, rest = str(fingerprint).partition(":")
    salt = rest.partition(":")[0]
    return kind == "scrypt" and hmac.compare_digest(_fingerprint(data, _unb64(salt)), fingerprint)


def _service_id(api, name):
    """The id of the service named exactly ``name`` (Docker's name filter matches prefixes,
    and an unknown name resolves as an ID prefix), or None."""
    found = api.services(filters={"name": name})
    return next((item["ID"] for item in found if item["Spec"]["Name"] == name), None)


class _Cluster:
    """One converge of a class's swarm on this manager: what changed, what failed, which
    secret values were used (masked in the outcome)."""

    def __init__(self, api, class_name, swarm, test):
        self.api, self.class_name, self.swarm, self.test = api, class_name, swarm, test
        self.changes, self.failures, self.notes, self.used, self.refs = {}, [], [], [], {}
        self.secrets = _fresh_secrets() if swarm["secrets"] or swarm["services"] else {}

    def step(self, what, function, *args):
        """``function(*args)``; an error is one line naming ``what``, and the converge goes on."""
        try:
            return function(*args)
        except (docker.errors.APIError, requests.exceptions.RequestException) as error:
            said = _said(error)
        except CommandExecutionError as error:
            said = error
        except Exception as error:  # one line for the operator; the minion's log has the rest
            log.exception("docker_swarm.converge: %s failed", what)
            said = f"{type(error).__name__}: {error}"
        self.failures.append(f"{what}: {' '.join(str(said).split())}")
        return None

    def change(self, what, change):
        self.changes[what] = change
        return not self.test  # whether to make it

    def node(self, minion, node_id):
        current = self.api.inspect_node(node_id)
        spec, settings = current["Spec"], self.swarm["nodes"].get(minion, {"labels": {}})
        labels = spec.get("Labels") or {}
        ours = {**self.swarm["node_labels"], **settings["labels"], "class": self.class_name}
        ours[MINION_LABEL] = minion
        stale = set(filter(None, labels.get(OWN_LABELS, "").split(","))) | {OWN_LABELS}
        want = {
            "Labels": {
                **{k: v for k, v in labels.items() if k not in stale},
                **ours,
                OWN_LABELS: ",".join(sorted(ours)),
            },
            "Availability": settings.get("availability", "active"),
        }
        changed = {k: {"old": spec.get(k), "new": v} for k, v in want.items() if spec.get(k) != v}
        if changed and self.change(f"node {minion}", changed):
            self.api.update_node(node_id, current["Version"]["Index"], {**spec, **want})

    def network(self, name, settings):
        found = [n["Id"] for n in self.api.networks(names=[name]) if n["Name"] == name]
        if not found:
            self.refs[name] = "(to be created)"
            if self.change(f"network {name}", "created"):
                options = {
                    **settings["options"],
                    **({"encrypted": ""} if settings["encrypted"] else {}),
                }
                pool = settings["subnet"] and docker.types.IPAMPool(
                    subnet=settings["subnet"], gateway=settings["gateway"]
                )
                self.refs[name] = self.api.create_network(
                    name,
                    driver=settings["driver"],
                    options=options,
                    ipam=pool and docker.types.IPAMConfig(pool_configs=[pool]),
                    internal=settings["internal"],
                    labels=managed_labels(self.class_name, settings["labels"]),
                    attachable=settings["attachable"],
                    scope="swarm",
                )["Id"]
            return
        current = self.api.inspect_network(found[0])
        options, ipam = (
            current.get("Options") or {},
            ((current["IPAM"] or {}).get("Config") or [{}])[0],
        )
        have = {
            "driver": current["Driver"],
            "attachable": current["Attachable"],
            "internal": current["Internal"],
            "encrypted": "encrypted" in options,
            "subnet": ipam.get("Subnet"),
            "gateway": ipam.get("Gateway"),
            **{f"options:{k}": options.get(k) for k in settings["options"]},
        }
        want = {**settings, **{f"options:{k}": v for k, v in settings["options"].items()}}
        other = [k for k, v in have.items() if want[k] is not None and want[k] != v]
        if other or current["Scope"] != "swarm":
            raise CommandExecutionError(
                f"it exists with other {', '.join(other) or 'scope'}: Docker cannot change a "
                "network in place; remove it (and the services using it) to have it recreated"
            )
        self.refs[name] = current["Id"]

    def versions(self, kind):
        """{pillar name: [versions, oldest first]} of the secrets/configs made for the class,
        each {id, name, version, fingerprint, in_use}."""
        found = getattr(self.api, f"{kind}s")(
            filters={"label": [f"{CLASS_LABEL}={self.class_name}"]}
        )
        key = kind.capitalize()
        used = {
            ref[f"{key}ID"]
            for item in self.api.services()
            for ref in (item["Spec"]["TaskTemplate"].get("ContainerSpec") or {}).get(f"{key}s")
            or []
        }
        entries = {}
        for item in found:
            labels = item["Spec"].get("Labels") or {}
            if labels.get(VERSION_LABEL, "").isdigit():
                entries.setdefault(labels.get(NAME_LABEL), []).append(
                    {
                        "id": item["ID"],
                        "name": item["Spec"]["Name"],
                        "version": int(labels[VERSION_LABEL]),
                        "fingerprint": labels.get(FINGERPRINT_LABEL, ""),
                        "in_use": item["ID"] in used,
                    }
                )
        return {name: sorted(items, key=lambda e: e["version"]) for name, items in entries.items()}

    def resolved(self, value):
        """``value`` with its ``{secret: name}`` references resolved (the values kept, masked
        in the outcome)."""
        try:
            return __utils__["dockerhosts_secrets.resolve"](value, self.secrets, self.used)
        except KeyError as error:
            raise CommandExecutionError(f"{error.args[0]}: is this minion of the class?") from error

    def version(self, kind, name, value, existing):
        """The latest version of secret/config ``name`` holds pillar's value: made if not."""
        data = str(self.resolved(value) if kind == "secret" else value["data"]).encode()
        latest = (existing.get(name) or [None])[-1]
        if latest and _fingerprint_matches(latest["fingerprint"], data):
            self.refs[(kind, name)] = (latest["id"], latest["name"])
            return
        number = latest["version"] + 1 if latest else 1
        versioned = f"{name}.v{number}"
        self.refs[(kind, name)] = ("(to be created)", versioned)
        if self.change(f"{kind} {name}", {"old": latest and latest["name"], "new": versioned}):
            labels = {
                NAME_LABEL: name,
                VERSION_LABEL: str(number),
                FINGERPRINT_LABEL: _fingerprint(data),
            }
            create = getattr(self.api, f"create_{kind}")
            made = create(versioned, data, labels=managed_labels(self.class_name, labels))
            self.refs[(kind, name)] = (made["ID"], versioned)

    def service(self, name, service):
        refs = {
            "networks": {n["name"]: self.refs[n["name"]] for n in service["networks"]},
            "secrets": {
                r["source"]: self.refs[("secret", r["source"])] for r in service["secrets"]
            },
            "configs": {
                r["source"]: self.refs[("config", r["source"])] for r in service["configs"]
            },
        }
        environment = self.resolved(service["environment"])
        desired = service_spec(name, service, self.class_name, environment, refs)
        service_id = _service_id(self.api, name)
        current = service_id and self.api.inspect_service(service_id)
        changed = describe_differences(desired, current["Spec"]) if current else "created"
        if changed and self.change(f"service {name}", changed):
            arguments = {key.lower(): desired[key] for key in ("Name", "Labels", "Mode")}
            arguments.update(
                task_template=desired["TaskTemplate"],
                update_config=desired["UpdateConfig"],
                rollback_config=desired["RollbackConfig"],
                endpoint_spec=desired["EndpointSpec"],
            )
            if current:
                version = current["Version"]["Index"]
                self.api.update_service(service_id, version, fetch_current_spec=False, **arguments)
            else:
                self.api.create_service(**arguments)
        if not self.test or not changed:
            status = service_wait(name, self.swarm["converge_timeout"], bool(current and changed))
            if status["outcome"] != "converged":
                raise CommandExecutionError(_rollout_failure(status))

    def unlisted(self):
        found = self.api.services(filters={"label": f"{CLASS_LABEL}={self.class_name}"})
        unlisted = sorted({s["Spec"]["Name"] for s in found} - set(self.swarm["services"]))
        if unlisted and self.swarm["unlisted_services"] == "keep":
            self.notes.append(f"kept services no longer in pillar: {', '.join(unlisted)}")
        elif unlisted and self.change("services removed", unlisted):
            for name in unlisted:
                self.api.remove_service(_service_id(self.api, name))

    def unused_versions(self, kind, listed):
        stale = [
            entry
            for name, entries in self.versions(kind).items()
            for entry in (entries if name not in listed else entries[:-1])
            if not entry["in_use"]
        ]
        if stale and self.change(f"{kind}s removed", [entry["name"] for entry in stale]):
            for entry in stale:
                getattr(self.api, f"remove_{kind}")(entry["id"])


def _fresh_secrets():
    """Pillar docker_secrets as the master compiles it for this minion now (as a state run
    does: the minion's own copy may predate a rotation)."""
    saltenv, pillarenv = __opts__.get("saltenv") or "base", __opts__.get("pillarenv")
    grains = dict(__grains__)  # a plain mapping: it travels to the master
    pillar = salt.pillar.get_pillar(__opts__, grains, __opts__["id"], saltenv, pillarenv=pillarenv)
    return pillar.compile_pillar().get("docker_secrets") or {}


def _rollout_failure(status):
    where = f"{status['running']}/{status['desired']} tasks running after {status['seconds']} s"
    return {
        "rolled_back": f"the update failed and Docker rolled it back ({status['message']})",
        "paused": f"the update failed and is paused ({status['message']})",
    }.get(status["outcome"], f"not converged: {where} ({status['message']})")


def converge(class_name, nodes, swarm, test=False):
    """
    On a manager: the class's swarm as pillar ``swarm`` (as ``validate`` returns it) says: the
    labels and availability of ``nodes`` ({minion: node id}), networks, secrets, configs,
    services (waiting for each to run its tasks), then services and versions pillar no longer
    names. ``test``: what would change, nothing changed. Returns {changes, failures, notes}.
    """
    with _engine("cannot converge the swarm") as api:
        run = _Cluster(api, class_name, swarm, test)
        for minion, node_id in sorted(nodes.items()):
            run.step(f"node {minion}", run.node, minion, node_id)
        for name, settings in swarm["networks"].items():
            run.step(f"network {name}", run.network, name, settings)
        for kind, values in (("secret", swarm["secrets"]), ("config", swarm["configs"])):
            existing = run.step(f"{kind}s of class {class_name}", run.versions, kind)
            for name, value in values.items() if existing is not None else ():
                run.step(f"{kind} {name}", run.version, kind, name, value, existing)
        for name, service in swarm["services"].items():
            needs = [n["name"] for n in service["networks"]]
            needs += [("secret", r["source"]) for r in service["secrets"]]
            needs += [("config", r["source"]) for r in service["configs"]]
            missing = [need for need in needs if need not in run.refs]
            if missing:
                run.failures.append(f"service {name}: not converged: {missing} failed first")
            else:
                run.step(f"service {name}", run.service, name, service)
        run.step("unlisted services", run.unlisted)
        if not run.failures:
            for kind in ("secret", "config"):
                run.step(f"unused {kind}s", run.unused_versions, kind, set(swarm[f"{kind}s"]))
    outcome = {"changes": run.changes, "failures": run.failures, "notes": run.notes}
    return __utils__["dockerhosts_secrets.masked"](outcome, run.used)


def service_wait(name, timeout=120, updated=False):
    """Wait until service ``name`` runs its desired number of tasks on its current spec (and,
    after an update, the update has finished): {outcome (converged, rolled_back, paused,
    timeout), update, message, running, desired, seconds}."""
    started = time.monotonic()
    with _engine(f"cannot follow service {name}") as api:
        service_id = _service_id(api, name)
        if service_id is None:
            raise CommandExecutionError(f"service {name} does not exist")
        status, outcome = _rollout(api, service_id, updated)
        while outcome is None and time.monotonic() - started < timeout:
            time.sleep(0.5)
            status, outcome = _rollout(api, service_id, updated)
        status["outcome"] = outcome or "timeout"
        if status["outcome"] != "converged":
            failed = [t["Status"] for t in api.tasks(filters={"service": service_id})]
            failed = [s for s in failed if s["State"] in ("failed", "rejected")]
            last = max(failed, key=lambda s: s["Timestamp"]) if failed else None
            why = f"last failed task: {last.get('Err') or last['State']}" if last else ""
            status["message"] = "; ".join(filter(None, [status["message"], why]))
    status["seconds"] = round(time.monotonic() - started, 1)
    return status


def _rollout(api, service_id, updated):
    """Where a service stands (update state, tasks running its current spec) and its outcome
    when final: converged, rolled_back or paused (None: not yet)."""
    current = api.inspect_service(service_id)
    template = {k: v for k, v in current["Spec"]["TaskTemplate"].items() if k != "Runtime"}
    tasks = api.tasks(filters={"service": service_id, "desired-state": "running"})
    running = [
        task
        for task in tasks
        if task["Status"]["State"] == "running"
        and {k: v for k, v in task["Spec"].items() if k != "Runtime"} == template
    ]
    replicas = (current["Spec"]["Mode"].get("Replicated") or {}).get("Replicas")
    update = (current.get("UpdateStatus") or {}) if updated else {}
    status = {
        "update": update.get("State"),
        "message": update.get("Message", ""),
        "running": len(running),
        "desired": len(tasks) if replicas is None else replicas,
    }
    if status["update"] in ("updating", "rollback_started"):
        return status, None
    final = {"rollback_completed": "rolled_back", "paused": "paused", "rollback_paused": "paused"}
    if status["update"] in final:
        return status, final[status["update"]]
    return status, "converged" if status["running"] >= status["desired"] else None
