"""
Swarm logic without engines: the pillar model (a corpus of bad pillar, each refused naming its
key path), the service spec and its comparison with what Docker reports, join tokens sealed to
one minion's key (opened by it, by nobody else, not in another role or cluster, not after
tampering or expiry), the runner's manager/worker plans, and entitlement from the master's node
records. Modules are loaded by path and given their dunders the loader way
(``configure_loader_modules``, pytest-salt-factories), ``__utils__`` holding the shared
``salt/_utils`` layer itself.
"""

import contextlib
import copy
import hashlib
import json
import time
from pathlib import Path

import jsonschema
import pytest
import salt.config
import yaml
from salt.exceptions import CommandExecutionError

from tools.salt_node import rsa_key_pair
from tools.salt_repo import load_module

REPO_ROOT = Path(__file__).resolve().parents[2]
SECRETS = {"api_token": "s3cr3t-value", "db": "another"}
UTILS = ("dockerhosts_checks", "dockerhosts_names", "dockerhosts_nodes", "dockerhosts_secrets")
MODULE = load_module("modules", "docker_swarm")
RUNNER = load_module("runners", "swarm")


def utils_dunder():
    """``__utils__`` as Salt's loader builds it from salt/_utils: ``<module>.<function>``."""
    found = {}
    for name in UTILS:
        module = load_module("utils", name)
        for attr, value in vars(module).items():
            if callable(value) and getattr(value, "__module__", None) == module.__name__:
                found[f"{name}.{attr}"] = value
    return found


@pytest.fixture
def pki(tmp_path):
    (tmp_path / "pki" / "minions").mkdir(parents=True)
    return tmp_path / "pki"


@pytest.fixture
def opts(pki):
    master = copy.deepcopy(salt.config.DEFAULT_MASTER_OPTS)
    master.update(pki_dir=str(pki), cachedir=str(pki.parent / "cache"), test=False, id="sw2")
    return master


@pytest.fixture
def configure_loader_modules(opts):
    utils = utils_dunder()
    common = {"__opts__": opts, "__utils__": utils, "__context__": {}}
    return {
        MODULE: {**common, "__pillar__": {"docker_secrets": SECRETS}, "__salt__": {}},
        RUNNER: {**common, "__salt__": {}},
    }


@pytest.fixture
def swarm_module():
    return MODULE


@pytest.fixture
def runner():
    return RUNNER


def minimal(**services):
    return {"enabled": True, "services": services}


def web(**options):
    return {"image": "app:1", **options}


# --- the pillar model: defaults.yaml, schema.yaml, the SDK's types --------------------------

DEFAULTS = yaml.safe_load((REPO_ROOT / "salt/docker/swarm/defaults.yaml").read_text())
SCHEMA = yaml.safe_load((REPO_ROOT / "salt/docker/swarm/schema.yaml").read_text())


def validate(pillar, secrets=None):
    return MODULE.validate(pillar, DEFAULTS, SCHEMA, SECRETS if secrets is None else secrets)


def test_defaults_are_filled_in():
    settings = validate({"enabled": True, "services": {"web": {"image": "app:1"}}})
    assert settings["managers"] == {"count": 1, "prefer": []}
    assert settings["listen_addr"] == "0.0.0.0:2377"
    assert settings["unlisted_services"] == "keep"
    service = settings["services"]["web"]
    assert service["replicas"] == 1
    assert service["endpoint_mode"] == "vip"
    assert service["update_config"] == {
        "parallelism": 1,
        "delay": 0,
        "monitor": 5 * 10**9,
        "max_failure_ratio": 0.0,
        "order": "stop-first",
        "failure_action": "pause",
    }
    assert service["restart_policy"]["delay"] == 5 * 10**9
    assert service["stop_grace_period"] == 10 * 10**9


def test_disabled_swarm_is_still_checked():
    assert validate(None)["enabled"] is False
    with pytest.raises(CommandExecutionError, match=r"swarm:enable: unknown key"):
        validate({"enable": True})


def test_units_and_short_forms_are_normalized():
    service = validate(
        minimal(
            web=web(
                command="httpd -f -p '80 80'",
                stop_grace_period="1m30s",
                update_config={"delay": 1.5, "monitor": "500ms"},
                healthcheck={"test": "wget -q localhost", "interval": "2s"},
                secrets=["api"],
                configs=["conf"],
                networks=["net"],
            )
        )
        | {"secrets": {"api": {"secret": "api_token"}}, "configs": {"conf": {"data": "x"}}}
        | {"networks": {"net": {}}}
    )["services"]["web"]
    assert service["stop_grace_period"] == 90 * 10**9
    assert service["update_config"]["delay"] == 1_500_000_000
    assert service["update_config"]["monitor"] == 500_000_000
    assert service["healthcheck"]["interval"] == 2 * 10**9
    assert service["secrets"] == [
        {"source": "api", "target": "api", "uid": "0", "gid": "0", "mode": 0o444}
    ]
    assert service["configs"][0]["target"] == "/conf"
    assert service["networks"] == [{"name": "net", "aliases": []}]


def documented(node, defaults):
    """Each documented value of pillar.example that has a default: (path, documented, default)."""
    if isinstance(defaults, dict) and defaults and isinstance(node, dict):
        for key, value in node.items():
            if key in defaults:
                yield from documented(value, defaults[key])
    elif not isinstance(defaults, (dict, list)) or defaults in ({}, []):
        yield node, defaults


def test_pillar_example_documents_every_key_with_its_default():
    example = yaml.safe_load((REPO_ROOT / "pillar.example").read_text())["swarm"]
    assert example["enabled"] is False
    example["enabled"] = True
    assert validate(example, secrets={"api_token": "x", "api_key": "y"})
    service, network = example["services"]["web"], example["networks"]["backend"]
    for part, node in (("swarm", example), ("service", service), ("network", network)):
        assert set(node) == set(DEFAULTS[part]), part  # every key, documented once
    for part, node in (("network", network), ("node", example["nodes"]["db1"])):
        for key, default in DEFAULTS[part].items():
            assert node[key] == default, f"{part}:{key}"
    for key in ("mode", "replicas", "init", "read_only", "endpoint_mode", "restart_policy"):
        assert service[key] == DEFAULTS["service"][key], key
    for key in ("update_config", "rollback_config", "max_replicas_per_node", "log_driver"):
        assert service[key] == DEFAULTS["service"][key], key


BAD_PILLAR = [
    ({"enabled": "yes"}, "swarm:enabled: must be true or false, not the string 'yes'"),
    (
        {"enabled": True, "managers": {"count": 2}},
        "swarm:managers:count: the number 2 is not one of 1, 3",
    ),
    ({"enabled": True, "managers": {"count": 4}}, "swarm:managers:count: the number 4"),
    (
        {"enabled": True, "managers": {"cnt": 3}},
        "swarm:managers:cnt: unknown key (did you mean count?)",
    ),
    ({"enabled": True, "managers": {"prefer": ["../etc"]}}, "swarm:managers:prefer"),
    ({"enabled": True, "advertise_addr": "eth0; rm -rf /"}, "swarm:advertise_addr"),
    (
        {"enabled": True, "converge_timeout": 0},
        "swarm:converge_timeout: 0 is out of range (1..3600)",
    ),
    (
        {"enabled": True, "converge_timeout": True},
        "swarm:converge_timeout: must be a whole number, not the boo",
    ),
    ({"enabled": True, "default_addr_pool": ["10.0.0.0"]}, "swarm:default_addr_pool"),
    ({"enabled": True, "nodes": {"n1": {"availability": "off"}}}, "swarm:nodes:n1:availability"),
    ({"enabled": True, "nodes": {"bad id!": {}}}, "swarm:nodes:bad id!"),
    ({"enabled": True, "node_labels": {"": "x"}}, "swarm:node_labels:"),
    ({"enabled": True, "node_labels": {"zone": ["a"]}}, "swarm:node_labels:zone"),
    ({"enabled": True, "node_labels": {"on": True}}, 'write a boolean as "true"'),
    ({"enabled": True, "networks": {"n1": {"driver": "over lay"}}}, "swarm:networks:n1:driver"),
    ({"enabled": True, "networks": {"n1": {"subnet": "10.0.0.0"}}}, "swarm:networks:n1:subnet"),
    ({"enabled": True, "networks": {"n1": {"encrypt": True}}}, "did you mean encrypted?"),
    ({"enabled": True, "networks": {"-n": {}}}, "swarm:networks:-n"),
    ({"enabled": True, "secrets": {"s": "plain"}}, "swarm:secrets:s: must be a {secret:"),
    ({"enabled": True, "secrets": {"s": {"secret": "missing"}}}, "refers to 'missing', which"),
    (
        {"enabled": True, "secrets": {"s": {"secret": "db", "x": 1}}},
        "swarm:secrets:s:x: unknown key",
    ),
    ({"enabled": True, "secrets": {"x" * 60: {"secret": "db"}}}, "is not a secret/config name"),
    ({"enabled": True, "configs": {"c": {}}}, "swarm:configs:c:data: is missing"),
    ({"enabled": True, "services": []}, "swarm:services: must be a mapping"),
    (
        {"enabled": True, "unlisted_services": "delete"},
        "swarm:unlisted_services: the string 'delete' is not one of",
    ),
    (minimal(web={}), "swarm:services:web:image: is missing"),
    (minimal(web=web(image="App:1")), "swarm:services:web:image: 'App:1'"),
    (minimal(web=web(image="x; rm -rf /")), "swarm:services:web:image"),
    (
        minimal(web=web(replica=3)),
        "swarm:services:web:replica: unknown key (did you mean replicas?)",
    ),
    (minimal(web=web(replicas=-1)), "swarm:services:web:replicas: -1"),
    (
        minimal(web=web(replicas="3")),
        "swarm:services:web:replicas: must be a whole number, not the s",
    ),
    (minimal(web=web(mode="global", replicas=2)), "swarm:services:web:replicas: only valid"),
    (minimal(web=web(mode="daemon")), "swarm:services:web:mode: mode must be either"),
    (minimal(web=web(command={"a": 1})), "swarm:services:web:command: must be a list of arguments"),
    (minimal(web=web(environment={"1BAD": "x"})), "swarm:services:web:environment:1BAD"),
    (minimal(web=web(environment={"A B": "x"})), "swarm:services:web:environment:A B"),
    (minimal(web=web(environment={"K": {"secret": "nope"}})), "environment:K: refers to 'nope'"),
    (
        minimal(web=web(environment={"K": {"secret": "db", "x": 1}})),
        "environment:K: must be text, a number",
    ),
    (minimal(web=web(environment={"K": ["a"]})), "swarm:services:web:environment:K"),
    (
        minimal(web=web(env={"K": "v"})),
        "swarm:services:web:env: is under a renamed key: use environment",
    ),
    (
        minimal(web=web(workdir="/srv")),
        "web:workdir: '/srv' is under a renamed key: use working_dir",
    ),
    (
        minimal(web=web(resources={"limits": {"memory": "64M"}})),
        "swarm:services:web:resources:limits: is under a renamed key: use cpu_limit and mem_limit",
    ),
    (
        minimal(web=web(log_driver={"name": "awslogs"})),
        "swarm:services:web:log_driver: must be a log driver name",
    ),
    (minimal(web=web(secrets=["undefined"])), "swarm:services:web:secrets:0: 'undefined'"),
    (minimal(web=web(configs=["undefined"])), "swarm:services:web:configs:0: 'undefined'"),
    (minimal(web=web(networks=["undefined"])), "swarm:services:web:networks:0: 'undefined'"),
    (minimal(web=web(ports=[8080])), "swarm:services:web:ports:0: must be a mapping"),
    (minimal(web=web(ports=[{"published": 80}])), "swarm:services:web:ports:0:target: is missing"),
    (minimal(web=web(ports=[{"target": 70000}])), "swarm:services:web:ports:0:target: 70000"),
    (
        minimal(web=web(ports=[{"target": 80, "mode": "bridge"}])),
        "ports:0:mode: the string 'bridge' is not one of",
    ),
    (minimal(web=web(ports=[{"target": 80, "protocol": "icmp"}])), "ports:0:protocol"),
    (
        minimal(web=web(endpoint_mode="dnsrr", ports=[{"target": 80}])),
        "swarm:services:web:ports: with endpoint_mode dnsrr, Docker publishes in mode host only",
    ),
    (minimal(web=web(endpoint_mode="rr")), "swarm:services:web:endpoint_mode: the string 'rr'"),
    (
        minimal(web=web(update_config={"delay": "5 minutes"})),
        "update_config:delay: must be a duration (seconds, or text like 1m30s, 500ms), not the s",
    ),
    (
        minimal(web=web(update_config={"delay": -1})),
        "update_config:delay: must be a duration (seconds, or text like 1m30s, 500ms), not the n",
    ),
    (minimal(web=web(update_config={"failure_action": "rollbak"})), "update_config: failure_a"),
    (minimal(web=web(update_config={"max_failure_ratio": 2})), "max_failure_ratio must be"),
    (minimal(web=web(update_config={"order": "first"})), "update_config: order must be"),
    (minimal(web=web(rollback_config={"failure_action": "rollback"})), "rollback_config:failure"),
    (minimal(web=web(update_config={"paralelism": 2})), "did you mean parallelism?"),
    (minimal(web=web(resources={"mem_limit": "lots"})), "resources:mem_limit: 'lots'"),
    (
        minimal(web=web(resources={"mem_limit": "5M"})),
        "resources:mem_limit: '5M' is not a size of 6M",
    ),
    (
        minimal(web=web(resources={"cpu_limit": 0})),
        "resources:cpu_limit: 0 is out of range (at least 0.01)",
    ),
    (minimal(web=web(resources={"limit": {}})), "resources:limit: unknown key"),
    (minimal(web=web(restart_policy={"condition": "always"})), "restart_policy: Invalid Resta"),
    (minimal(web=web(healthcheck={"interval": "1s"})), "healthcheck:test: is missing"),
    (
        minimal(web=web(preferences=[{"spread": None}])),
        "preferences:0:spread: must be a string, not null",
    ),
    (minimal(web=web(max_replicas_per_node=-1)), "max_replicas_per_node: -1"),
    (
        minimal(web=web(init="yes")),
        "swarm:services:web:init: must be true or false, not the string",
    ),
    ({"enabled": True, "services": {"bad name": web()}}, "swarm:services:bad name"),
]


@pytest.mark.parametrize(("pillar", "message"), BAD_PILLAR, ids=lambda v: str(v)[:50])
def test_bad_pillar_is_refused_naming_the_key(pillar, message):
    with pytest.raises(CommandExecutionError) as error:
        validate(pillar)
    assert message in str(error.value)
    assert str(error.value).startswith("swarm")
    assert "\n" not in str(error.value)


def test_every_problem_is_named_at_once():
    pillar = minimal(web=web(env={}, replicas="3", ports=[{"target": 0}]))
    pillar["services"]["web"].update(update_config={"order": "first"}, secrets=["nope"])
    pillar["services"]["web"]["resources"] = {"mem_limit": "5M"}
    pillar["managers"] = {"count": 2}
    with pytest.raises(CommandExecutionError) as error:
        validate(pillar)
    paths = ("managers:count", "web:env", "web:replicas", "web:ports:0:target")
    paths += ("web:update_config", "web:secrets:0", "web:resources:mem_limit")  # not the schema's
    for path in paths:
        assert f"swarm:{'services:' if 'web' in path else ''}{path}: " in str(error.value), path


def test_the_schema_is_a_json_schema_and_jsonschema_agrees_with_the_kit():
    """schema.yaml is read by the checker kit (a subset of JSON Schema): the jsonschema
    package finds problems in exactly the pillars the kit does."""
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    validator = jsonschema.Draft202012Validator(SCHEMA)
    kit = load_module("utils", "dockerhosts_checks")
    example = yaml.safe_load((REPO_ROOT / "pillar.example").read_text())["swarm"]
    pillars = [example, minimal(web=web())] + [pillar for pillar, _ in BAD_PILLAR]
    verdicts = [
        (bool(list(validator.iter_errors(p))), bool(kit.validate(p, SCHEMA, "swarm")))
        for p in pillars
    ]
    assert verdicts[:2] == [(False, False)] * 2
    assert all(theirs == ours for theirs, ours in verdicts), verdicts


def test_secret_values_never_appear_in_errors():
    for pillar in (
        minimal(web=web(environment={"K": {"secret": "api_token"}}, secrets=["x"])),
        {"enabled": True, "secrets": {"s": {"secret": "api_token"}}, "nodes": {"!": {}}},
    ):
        with pytest.raises(CommandExecutionError) as error:
            validate(pillar)
        assert SECRETS["api_token"] not in str(error.value)


# --- the service spec, with the SDK's types, and its differences to Docker's -----------------


def spec_of(**options):
    settings = validate(
        {
            "enabled": True,
            "networks": {"net": {}},
            "secrets": {"api": {"secret": "api_token"}},
            "services": {"web": web(networks=["net"], secrets=["api"], **options)},
        }
    )
    refs = {"secrets": {"api": ("sid", "api.v1")}, "configs": {}, "networks": {"net": "nid"}}
    service = settings["services"]["web"]
    return MODULE.service_spec("web", service, "backends", {"A": "1"}, refs)


def test_service_spec_carries_every_managed_setting():
    spec = spec_of(
        replicas=3,
        endpoint_mode="dnsrr",
        ports=[{"target": 80, "published": 8080, "mode": "host"}],
        constraints=["node.labels.class == backends"],
        healthcheck={"test": ["CMD-SHELL", "true"], "interval": "1s"},
        resources={"mem_limit": "64M", "cpu_limit": 0.5},
        log_driver="json-file",
        log_opt={"max-size": "10m"},
    )
    assert spec["Mode"] == {"replicated": {"Replicas": 3}}
    assert spec["Labels"] == {
        "com.docker-hosts.managed": "true",
        "com.docker-hosts.class": "backends",
    }
    task = spec["TaskTemplate"]
    assert task["Networks"] == [{"Target": "nid", "Aliases": [], "DriverOpts": None}]
    assert task["ContainerSpec"]["Secrets"] == [
        {
            "File": {"Name": "api", "UID": "0", "GID": "0", "Mode": 0o444},
            "SecretID": "sid",
            "SecretName": "api.v1",
        }
    ]
    assert task["ContainerSpec"]["Env"] == ["A=1"]
    assert task["ContainerSpec"]["Healthcheck"]["Interval"] == 10**9
    assert task["Resources"] == {"Limits": {"NanoCPUs": 5 * 10**8, "MemoryBytes": 64 * 2**20}}
    assert task["LogDriver"] == {"Name": "json-file", "Options": {"max-size": "10m"}}
    assert task["Placement"]["Constraints"] == ["node.labels.class == backends"]
    assert spec["EndpointSpec"] == {
        "Mode": "dnsrr",
        "Ports": [
            {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "host"}
        ],
    }


def test_healthcheck_forms():
    shell = spec_of(healthcheck={"test": "wget -q localhost"})
    assert shell["TaskTemplate"]["ContainerSpec"]["Healthcheck"]["Test"][0] == "CMD-SHELL"
    argv = spec_of(healthcheck={"test": ["wget", "-q", "localhost"]})
    assert argv["TaskTemplate"]["ContainerSpec"]["Healthcheck"]["Test"][0] == "CMD"


def docker_view(spec):
    """What Docker reports back: its own case, zero/empty values omitted, its own fields."""
    reported = json.loads(json.dumps(spec))
    reported["Mode"] = {"Replicated": reported["Mode"].pop("replicated")}
    container = reported["TaskTemplate"]["ContainerSpec"]
    container["Isolation"] = "default"
    reported["TaskTemplate"]["Runtime"] = "container"
    for key in ("Command", "Configs", "ReadOnly", "Init"):
        container.pop(key, None)
    reported["TaskTemplate"]["Networks"][0].pop("DriverOpts")
    reported["UpdateConfig"].pop("MaxFailureRatio")
    reported["UpdateConfig"].pop("Delay")
    return reported


def test_same_spec_as_docker_reports_it_has_no_differences():
    spec = spec_of()
    assert MODULE.spec_differences(spec, docker_view(spec)) == []


def test_changes_are_found_and_described():
    current = docker_view(spec_of())
    desired = spec_of(image="app:2", replicas=2, constraints=["node.role == worker"])
    described = MODULE.describe_differences(desired, current)
    assert described["TaskTemplate.ContainerSpec.Image"] == {"old": "app:1", "new": "app:2"}
    assert described["Mode.replicated.Replicas"] == {"old": 1, "new": 2}
    assert "TaskTemplate.Placement.Constraints" in described


def test_removed_settings_are_differences_too():
    current = docker_view(spec_of(constraints=["node.role == worker"], init=True))
    current["TaskTemplate"]["ContainerSpec"]["Init"] = True
    found = MODULE.spec_differences(spec_of(), current)
    assert "TaskTemplate.Placement.Constraints" in found
    assert "TaskTemplate.ContainerSpec.Init" in found


def test_converge_masks_the_secrets_in_what_it_returns(monkeypatch):
    settings = validate(minimal(web=web(environment={"API_TOKEN": {"secret": "api_token"}})))

    class Refusing:  # an engine that refuses the service, quoting its environment back
        def services(self, filters=None):
            return []

        secrets = configs = services

        def create_service(self, task_template, **_):
            env = task_template["ContainerSpec"]["Env"]
            raise MODULE.docker.errors.APIError(f"bad env {env}")

    @contextlib.contextmanager
    def engine(action, secret=None):
        yield Refusing()

    monkeypatch.setattr(MODULE, "_engine", engine)
    monkeypatch.setattr(MODULE, "_fresh_secrets", lambda: SECRETS)
    outcome = MODULE.converge("backends", {}, settings)
    assert outcome["failures"] == ["service web: bad env ['API_TOKEN=**********']"]
    assert SECRETS["api_token"] not in json.dumps(outcome)


# --- join tokens sealed to one minion --------------------------------------------------------


def key_pair(bits=2048):
    private_pem, public_pem = rsa_key_pair(bits)
    return private_pem, public_pem.decode()


@pytest.fixture(scope="module")
def keys():
    return {"sw2": key_pair(), "sw3": key_pair()}


TOKEN = "SWMTKN-1-3pu6hszjas19xyp7ghgosyx9k8atbfcr8p2is99znpy26u2lkl-1awxwuwd3z9j1z3puu7rcgdbx"


def sealed_for(module, public_pem, recipient="sw2", role="worker", cluster="c1"):
    payload = json.dumps({"token": TOKEN, "not_after": time.time() + 60}).encode()
    return module._seal(public_pem, payload, module._seal_context(recipient, role, cluster))


def test_sealed_token_opens_only_for_its_minion_role_and_cluster(swarm_module, keys):
    blob = sealed_for(swarm_module, keys["sw2"][1])
    assert TOKEN not in blob
    context = swarm_module._seal_context
    opened = swarm_module._unseal(keys["sw2"][0], blob, context("sw2", "worker", "c1"))
    assert json.loads(opened)["token"] == TOKEN
    for private, ctx in (
        (keys["sw3"][0], context("sw2", "worker", "c1")),  # another minion's key
        (keys["sw3"][0], context("sw3", "worker", "c1")),  # ... claiming to be the recipient
        (keys["sw2"][0], context("sw2", "manager", "c1")),  # the manager role
        (keys["sw2"][0], context("sw2", "worker", "c2")),  # another cluster
    ):
        with pytest.raises(CommandExecutionError, match="cannot open the sealed join token"):
            swarm_module._unseal(private, blob, ctx)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b.replace("dhswarm1", "dhswarm2"),
        lambda b: b[:-4] + ("AAAA" if not b.endswith("AAAA") else "BBBB"),
        lambda b: ".".join(b.split(".")[:3]),
        lambda b: "",
        lambda b: "not a blob at all",
    ],
    ids=["format", "ciphertext", "truncated", "empty", "garbage"],
)
def test_tampered_token_does_not_open(swarm_module, keys, mangle):
    blob = mangle(sealed_for(swarm_module, keys["sw2"][1]))
    with pytest.raises(CommandExecutionError) as error:
        swarm_module._unseal(
            keys["sw2"][0], blob, swarm_module._seal_context("sw2", "worker", "c1")
        )
    assert TOKEN not in str(error.value)


def test_weak_or_foreign_keys_are_refused(swarm_module):
    with pytest.raises(CommandExecutionError, match="2048 bits"):
        sealed_for(swarm_module, key_pair(1024)[1])
    with pytest.raises(ValueError):
        sealed_for(swarm_module, "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")


def test_expired_token_is_refused(swarm_module, keys, tmp_path):
    (tmp_path / "minion.pem").write_bytes(keys["sw2"][0])
    swarm_module.__opts__ = {"pki_dir": str(tmp_path), "id": "sw2"}
    payload = json.dumps({"token": TOKEN, "not_after": time.time() - 1}).encode()
    context = swarm_module._seal_context("sw2", "worker", "c1")
    blob = swarm_module._seal(keys["sw2"][1], payload, context)
    with pytest.raises(CommandExecutionError, match="expired"):
        swarm_module._open_token(blob, "worker", "c1")
    fresh = sealed_for(swarm_module, keys["sw2"][1])
    assert swarm_module._open_token(fresh, "worker", "c1") == TOKEN


def test_fingerprints_are_salted_and_match_only_their_value(swarm_module):
    one = swarm_module._fingerprint(b"value")
    two = swarm_module._fingerprint(b"value")
    assert one != two
    assert "value" not in one
    assert swarm_module._fingerprint_matches(one, b"value")
    assert not swarm_module._fingerprint_matches(one, b"other")
    assert not swarm_module._fingerprint_matches("garbage", b"value")


def test_engine_errors_are_one_line_naming_the_action_token_masked(swarm_module, monkeypatch):
    swarm_module.__salt__ = {"config.get": lambda key: "unix:///nonexistent/docker.sock"}
    with pytest.raises(CommandExecutionError) as down, swarm_module._engine("swarm join failed"):
        pass
    assert str(down.value).startswith("swarm join failed: the Docker engine does not answer")
    assert "\n" not in str(down.value)

    class Answering:  # an engine that answers (the errors below are raised by hand)
        def __init__(self, **_):
            pass

        def close(self):
            pass

    monkeypatch.setattr(swarm_module.docker, "APIClient", Answering)
    error = swarm_module.docker.errors.APIError(f"error with {TOKEN}\ninside")
    with (
        pytest.raises(CommandExecutionError) as raised,
        swarm_module._engine("swarm join failed", TOKEN),
    ):
        raise error
    assert str(raised.value) == "swarm join failed: error with ********** inside"
    assert raised.value.__cause__ is error
    with pytest.raises(KeyError), swarm_module._engine("swarm join failed"):
        raise KeyError("not Docker's")


# --- the runner's plans ---------------------------------------------------------------------


def info(state="inactive", manager=False, cluster=None, addr=None, managers=()):
    return {
        "state": state,
        "is_manager": manager,
        "cluster_id": cluster,
        "node_addr": addr,
        "node_id": f"id-{addr}",
        "managers": list(managers),
    }


def active_manager(addr, cluster="c1"):
    return info("active", True, cluster, addr, [f"{addr}:2377"])


def active_worker(addr, manager_addr):
    return info("active", False, None, addr, [f"{manager_addr}:2377"])


MEMBERS = ["n1", "n2", "n3"]


def two_engines_and_a_new_one(n1, n2):
    """What MEMBERS report: ``n1`` and ``n2`` as given, n3 in no swarm yet."""
    return {"n1": n1, "n2": n2, "n3": info()}


def test_init_only_when_nobody_is_in_a_swarm(runner):
    infos = {member: info() for member in MEMBERS}
    plan = runner.plan_managers(MEMBERS, infos, 1)
    assert plan["init"] == "n1"
    assert plan["errors"] == []
    assert plan["join"] == plan["promote"] == plan["demote"] == []


def test_prefer_picks_the_first_manager(runner):
    infos = {member: info() for member in MEMBERS}
    plan = runner.plan_managers(MEMBERS, infos, 3, prefer=["n3"])
    assert plan["init"] == "n3"
    assert plan["join"] == ["n1", "n2"]


@pytest.mark.parametrize(
    ("infos", "known", "message"),
    [
        ({"n1": info(), "n2": None, "n3": info()}, None, "n2 do not answer"),
        (
            {"n1": info(), "n2": active_worker("10.0.0.2", "10.0.0.9"), "n3": info()},
            None,
            "n2 already",
        ),
        ({"n1": info(), "n2": info("pending"), "n3": info()}, None, "n2 already in a swarm"),
        ({m: info() for m in MEMBERS}, "c0", "the class had swarm c0"),
    ],
    ids=["silent-member", "worker-of-an-unreachable-manager", "pending", "had-a-swarm"],
)
def test_never_a_second_init(runner, infos, known, message):
    plan = runner.plan_managers(MEMBERS, infos, 1, known_cluster=known)
    assert plan["init"] is None
    assert message in plan["errors"][0]


def test_two_swarms_in_one_class_are_refused(runner):
    infos = two_engines_and_a_new_one(
        active_manager("10.0.0.1", "c1"), active_manager("10.0.0.2", "c2")
    )
    assert "different swarms" in runner.plan_managers(MEMBERS, infos, 1)["errors"][0]


def test_existing_managers_stay_more_are_promoted_or_joined(runner):
    infos = two_engines_and_a_new_one(
        active_manager("10.0.0.1"), active_worker("10.0.0.2", "10.0.0.1")
    )
    plan = runner.plan_managers(MEMBERS, infos, 3)
    assert plan["init"] is None
    assert plan["promote"] == ["n2"]
    assert plan["join"] == ["n3"]


def test_fewer_managers_demotes_the_extra_ones(runner):
    infos = {m: active_manager(f"10.0.0.{i}") for i, m in enumerate(MEMBERS, 1)}
    plan = runner.plan_managers(MEMBERS, infos, 1)
    assert plan["demote"] == ["n2", "n3"]


def test_manager_count_never_exceeds_an_odd_number_of_members(runner):
    members = ["n1", "n2"]
    infos = {m: info() for m in members}
    plan = runner.plan_managers(members, infos, 3)
    assert plan["init"] == "n1"
    assert plan["join"] == []


def test_a_node_in_another_swarm_is_never_promoted(runner):
    infos = two_engines_and_a_new_one(
        active_manager("10.0.0.1"), active_worker("10.0.0.2", "10.9.9.9")
    )
    plan = runner.plan_managers(MEMBERS, infos, 3)
    assert "n2" not in plan["promote"]
    assert runner.plan_workers(MEMBERS, infos) == {"join": ["n3"], "foreign": ["n2"]}


def test_the_class_swarm_is_remembered_in_the_masters_cache(runner, opts):
    legacy = Path(opts["cachedir"]) / "docker-hosts-swarm" / "backends.json"
    assert runner._known_cluster("backends") is None
    legacy.parent.mkdir(parents=True)
    legacy.write_text(json.dumps({"cluster_id": "c0", "since": 1}))  # as earlier versions kept it
    assert runner._known_cluster("backends") == "c0"
    runner._remember_cluster("backends", "c1")
    assert runner._known_cluster("backends") == "c1"
    assert runner.forget("backends")["changes"] == {"cluster": {"old": "c1", "new": None}}
    assert not legacy.exists() and runner._known_cluster("backends") is None


@pytest.mark.parametrize(
    ("reachability", "problem"),
    [
        (["reachable"], None),
        (["reachable", "reachable", "unreachable"], None),
        (["reachable", "unreachable", "unreachable"], "1 of 3 managers reachable (down: n2, n3)"),
        (["reachable", "unreachable"], "1 of 2 managers reachable (down: n2)"),
    ],
)
def test_quorum_needs_a_majority_of_reachable_managers(runner, reachability, problem):
    nodes = [
        {"role": "manager", "reachability": state, "labels": {runner.MINION_LABEL: f"n{i}"}}
        for i, state in enumerate(reachability, 1)
    ]
    nodes.append({"role": "worker", "reachability": None, "labels": {}, "hostname": "w"})
    assert runner.quorum_problem(nodes) == problem


# --- entitlement from the master's node records -------------------------------------------


def key_text(minion):
    return f"-----BEGIN PUBLIC KEY-----\n{minion}\n-----END PUBLIC KEY-----\n"


def register(opts, minion, class_name=None, key=True, record_key=None):
    """A node record for ``minion`` (class, the fingerprint of ``record_key`` or of its own key)
    and, with ``key``, its accepted key."""
    if key:
        (Path(opts["pki_dir"]) / "minions" / minion).write_text(key_text(minion))
    if class_name:
        made_for = (record_key or key_text(minion)).strip().encode()
        record = {"class": class_name, "key": hashlib.sha256(made_for).hexdigest()}
        utils_dunder()["dockerhosts_nodes.put"](opts, minion, record)


def test_members_and_classes_come_from_the_node_records(runner, opts):
    register(opts, "a", "backends")
    register(opts, "b", "backends")
    register(opts, "c", "dataserver")
    register(opts, "old", "backends", record_key=key_text("an earlier key"))
    assert runner.__utils__["dockerhosts_nodes.members"](opts, "backends") == ["a", "b"]
    assert runner._class_of("c") == "dataserver"
    assert runner._class_of("old") is None  # a new key for an old name has no class
    assert runner._class_of("unknown") is None
    with pytest.raises(runner.SwarmError):
        runner._class_of("../minions/a")


def test_no_accepted_key_no_token(runner, opts):
    register(opts, "a", "backends", key=False)
    register(opts, "b", "backends", record_key=key_text("an earlier key"))
    register(opts, "c", "backends")
    assert runner._public_key("a") is None
    assert runner._public_key("b") is None  # not the key the record was made for
    assert runner._public_key("c") == key_text("c")


@pytest.mark.parametrize(
    ("minion", "message"),
    [
        ("grain-only", "give it no class"),
        ("other-class", "give it class 'dataserver'"),
        ("no-key", "give it no class"),
        ("disabled", "swarm is not enabled in the pillar of class 'backends'"),
    ],
)
def test_refusals(runner, opts, minion, message):
    register(opts, "other-class", "dataserver")
    register(opts, "no-key", "backends", key=False)
    register(opts, "disabled", "backends")
    register(opts, "grain-only")
    run = runner._Run.__new__(runner._Run)
    run.class_name = "backends"
    run._settings = {"disabled": {"enabled": False}}
    assert message in run.refusal(minion)


def test_entitled_member(runner, opts):
    register(opts, "a", "backends")
    run = runner._Run.__new__(runner._Run)
    run.class_name = "backends"
    run._settings = {"a": {"enabled": True}}
    assert run.refusal("a") is None


def test_removal_refuses_names_without_a_class_or_a_valid_name(runner, opts):
    refused = runner.remove_node("ghost,bad name!")
    assert refused["result"] is False and refused["retcode"] == 1
    assert "swarm.remove_node ghost: no class in the master's node records" in refused["comment"]
    assert "swarm.remove_node bad name!: 'bad name!' is not a node name" in refused["comment"]
    assert "\n" not in refused["comment"]
