"""
Swarm logic without engines: the pillar model (a corpus of bad pillar, each refused naming its
key path), the service spec and its comparison with what Docker reports, join tokens sealed to
one minion's key (opened by it, by nobody else, not in another role or cluster, not after
tampering or expiry), the runner's manager/worker plans, and entitlement from the registry.
Modules are imported by path, as Salt's loader does.
"""

import json
import time
from pathlib import Path

import pytest
import yaml
from salt.exceptions import CommandExecutionError

from tools.salt_node import rsa_key_pair
from tools.salt_repo import load_module

REPO_ROOT = Path(__file__).resolve().parents[2]
SECRETS = {"api_token": "s3cr3t-value", "db": "another"}


@pytest.fixture
def swarm_module():
    module = load_module("modules", "docker_swarm")
    module.__pillar__ = {"docker_secrets": SECRETS}
    return module


@pytest.fixture
def runner():
    return load_module("runners", "swarm")


def minimal(**services):
    return {"enabled": True, "services": services}


def web(**options):
    return {"image": "app:1", **options}


# --- the pillar model -----------------------------------------------------------------------


def test_defaults_are_filled_in(swarm_module):
    settings = swarm_module.validate({"enabled": True, "services": {"web": {"image": "app:1"}}})
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


def test_disabled_swarm_is_still_checked(swarm_module):
    assert swarm_module.validate(None)["enabled"] is False
    with pytest.raises(CommandExecutionError, match=r"swarm:enable: unknown key"):
        swarm_module.validate({"enable": True})


def test_units_are_normalized(swarm_module):
    service = swarm_module.validate(
        minimal(
            web=web(
                command="httpd -f -p '80 80'",
                stop_grace_period="1m30s",
                resources={
                    "limits": {"memory": "64M", "cpus": 0.5},
                    "reservations": {"memory": 1024},
                },
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
    assert service["command"] == ["httpd", "-f", "-p", "80 80"]
    assert service["stop_grace_period"] == 90 * 10**9
    assert service["resources"]["limits"] == {"cpus": 5 * 10**8, "memory": 64 * 2**20, "pids": None}
    assert service["update_config"]["delay"] == 1_500_000_000
    assert service["update_config"]["monitor"] == 500_000_000
    assert service["healthcheck"]["test"] == ["wget", "-q", "localhost"]
    assert service["secrets"] == [
        {"source": "api", "target": "api", "uid": "0", "gid": "0", "mode": 0o444}
    ]
    assert service["configs"][0]["target"] == "/conf"
    assert service["networks"] == [{"name": "net", "aliases": []}]


def test_pillar_example_is_valid_and_documents_the_defaults(swarm_module):
    example = yaml.safe_load((REPO_ROOT / "pillar.example").read_text())["swarm"]
    assert example["enabled"] is False
    example["enabled"] = True
    swarm_module.__pillar__ = {"docker_secrets": {"api_token": "x", "api_key": "y"}}
    documented = swarm_module.validate(example)
    defaults = swarm_module.validate(
        {"enabled": True, "networks": {"n": {}}, "services": {"web": {"image": "x"}}}
    )
    for key in ("managers", "advertise_addr", "listen_addr", "default_addr_pool", "subnet_size"):
        assert documented[key] == defaults[key], key
    for key in ("converge_timeout", "unlisted_services"):
        assert documented[key] == defaults[key], key
    assert documented["networks"]["backend"] == defaults["networks"]["n"]
    web_documented, web_default = documented["services"]["web"], defaults["services"]["web"]
    for key in (
        "mode",
        "replicas",
        "init",
        "read_only",
        "stop_grace_period",
        "endpoint_mode",
        "max_replicas_per_node",
        "restart_policy",
        "update_config",
        "rollback_config",
        "healthcheck",
        "log_driver",
    ):
        assert web_documented[key] == web_default[key], key


BAD_PILLAR = [
    ({"enabled": "yes"}, "swarm:enabled: 'yes' is not true or false"),
    ({"enabled": True, "managers": {"count": 2}}, "swarm:managers:count: 2: use 1, or an odd"),
    ({"enabled": True, "managers": {"count": 4}}, "swarm:managers:count: 4"),
    (
        {"enabled": True, "managers": {"cnt": 3}},
        "swarm:managers:cnt: unknown key (did you mean 'count'?)",
    ),
    ({"enabled": True, "managers": {"prefer": ["../etc"]}}, "swarm:managers:prefer:0"),
    ({"enabled": True, "advertise_addr": "eth0; rm -rf /"}, "swarm:advertise_addr"),
    ({"enabled": True, "converge_timeout": 0}, "swarm:converge_timeout: 0 is not an integer"),
    ({"enabled": True, "converge_timeout": True}, "swarm:converge_timeout: True"),
    ({"enabled": True, "default_addr_pool": ["10.0.0.0"]}, "swarm:default_addr_pool:0"),
    ({"enabled": True, "nodes": {"n1": {"availability": "off"}}}, "swarm:nodes:n1:availability"),
    ({"enabled": True, "nodes": {"bad id!": {}}}, "swarm:nodes:bad id!"),
    ({"enabled": True, "node_labels": {"": "x"}}, "swarm:node_labels:"),
    ({"enabled": True, "node_labels": {"zone": ["a"]}}, "swarm:node_labels:zone"),
    ({"enabled": True, "networks": {"n": {"driver": "over lay"}}}, "swarm:networks:n:driver"),
    ({"enabled": True, "networks": {"n": {"subnet": "10.0.0.0"}}}, "swarm:networks:n:subnet"),
    ({"enabled": True, "networks": {"n": {"encrypt": True}}}, "did you mean 'encrypted'?"),
    ({"enabled": True, "networks": {"-n": {}}}, "swarm:networks:-n"),
    ({"enabled": True, "secrets": {"s": "plain"}}, "swarm:secrets:s: must be {secret:"),
    ({"enabled": True, "secrets": {"s": {"secret": "missing"}}}, "refers to secret 'missing'"),
    ({"enabled": True, "secrets": {"s": {"secret": "db", "x": 1}}}, "swarm:secrets:s: must be"),
    ({"enabled": True, "secrets": {"x" * 60: {"secret": "db"}}}, "is not a secret/config name"),
    ({"enabled": True, "configs": {"c": {}}}, "swarm:configs:c:data: is required"),
    ({"enabled": True, "services": []}, "swarm:services: must be a mapping"),
    ({"enabled": True, "unlisted_services": "delete"}, "swarm:unlisted_services: 'delete'"),
    (minimal(web={}), "swarm:services:web:image: is required"),
    (minimal(web=web(image="App:1")), "swarm:services:web:image: 'App:1'"),
    (minimal(web=web(image="x; rm -rf /")), "swarm:services:web:image"),
    (minimal(web=web(replica=3)), "swarm:services:web:replica: unknown key (did you mean"),
    (minimal(web=web(replicas=-1)), "swarm:services:web:replicas: -1"),
    (minimal(web=web(replicas="3")), "swarm:services:web:replicas: '3'"),
    (minimal(web=web(mode="global", replicas=2)), "swarm:services:web:replicas: only valid"),
    (minimal(web=web(mode="daemon")), "swarm:services:web:mode: 'daemon'"),
    (minimal(web=web(command={"a": 1})), "swarm:services:web:command: must be a list"),
    (minimal(web=web(command="sh -c 'unclosed")), "swarm:services:web:command: cannot split"),
    (minimal(web=web(env={"1BAD": "x"})), "swarm:services:web:env:1BAD"),
    (minimal(web=web(env={"K": {"secret": "nope"}})), "swarm:services:web:env:K: refers"),
    (minimal(web=web(env={"K": {"secret": "db", "x": 1}})), "swarm:services:web:env:K: must be"),
    (minimal(web=web(env={"K": ["a"]})), "swarm:services:web:env:K"),
    (minimal(web=web(secrets=["undefined"])), "swarm:services:web:secrets:0: 'undefined'"),
    (minimal(web=web(configs=["undefined"])), "swarm:services:web:configs:0: 'undefined'"),
    (minimal(web=web(networks=["undefined"])), "swarm:services:web:networks:0: 'undefined'"),
    (minimal(web=web(ports=[8080])), "swarm:services:web:ports:0: must be a mapping"),
    (minimal(web=web(ports=[{"published": 80}])), "swarm:services:web:ports:0:target: is required"),
    (minimal(web=web(ports=[{"target": 70000}])), "swarm:services:web:ports:0:target: 70000"),
    (minimal(web=web(ports=[{"target": 80, "mode": "bridge"}])), "ports:0:mode: 'bridge'"),
    (minimal(web=web(ports=[{"target": 80, "protocol": "icmp"}])), "ports:0:protocol"),
    (minimal(web=web(endpoint_mode="rr")), "swarm:services:web:endpoint_mode: 'rr'"),
    (minimal(web=web(update_config={"delay": "5 minutes"})), "update_config:delay: '5 minutes'"),
    (minimal(web=web(update_config={"delay": -1})), "update_config:delay: -1"),
    (minimal(web=web(update_config={"failure_action": "rollbak"})), "failure_action: 'rollbak'"),
    (minimal(web=web(update_config={"max_failure_ratio": 2})), "max_failure_ratio: 2"),
    (minimal(web=web(rollback_config={"failure_action": "rollback"})), "rollback_config:failure"),
    (minimal(web=web(update_config={"paralelism": 2})), "did you mean 'parallelism'?"),
    (minimal(web=web(resources={"limits": {"memory": "lots"}})), "resources:limits:memory"),
    (minimal(web=web(resources={"limits": {"cpus": 0}})), "resources:limits:cpus: 0"),
    (minimal(web=web(resources={"limit": {}})), "did you mean 'limits'?"),
    (minimal(web=web(restart_policy={"condition": "always"})), "restart_policy:condition"),
    (minimal(web=web(healthcheck={"interval": "1s"})), "healthcheck:test: is required"),
    (minimal(web=web(preferences=[{"spread": ""}])), "preferences:0:spread"),
    (minimal(web=web(max_replicas_per_node=-1)), "max_replicas_per_node: -1"),
    (minimal(web=web(init="yes")), "swarm:services:web:init: 'yes'"),
    (minimal(web=web(log_driver={"options": {}})), "log_driver:name: is required"),
    ({"enabled": True, "services": {"bad name": web()}}, "swarm:services:bad name"),
]


@pytest.mark.parametrize(("pillar", "message"), BAD_PILLAR, ids=lambda v: str(v)[:50])
def test_bad_pillar_is_refused_naming_the_key(swarm_module, pillar, message):
    with pytest.raises(CommandExecutionError) as error:
        swarm_module.validate(pillar)
    assert message in str(error.value)
    assert str(error.value).startswith("swarm")


def test_secret_values_never_appear_in_errors(swarm_module):
    for pillar in (
        minimal(web=web(env={"K": {"secret": "api_token"}}, secrets=["x"])),
        {"enabled": True, "secrets": {"s": {"secret": "api_token"}}, "nodes": {"!": {}}},
    ):
        with pytest.raises(CommandExecutionError) as error:
            swarm_module.validate(pillar)
        assert SECRETS["api_token"] not in str(error.value)


# --- service spec and differences ----------------------------------------------------------


def spec_of(module, **options):
    settings = module.validate(
        {
            "enabled": True,
            "networks": {"net": {}},
            "secrets": {"api": {"secret": "api_token"}},
            "services": {"web": web(networks=["net"], secrets=["api"], **options)},
        }
    )
    refs = {"secrets": {"api": ("sid", "api.v1")}, "configs": {}, "networks": {"net": "nid"}}
    return module.service_spec("web", settings["services"]["web"], "backends", None, refs)


def test_service_spec_carries_every_managed_setting(swarm_module):
    spec = spec_of(
        swarm_module,
        replicas=3,
        endpoint_mode="dnsrr",
        ports=[{"target": 80, "published": 8080, "mode": "host"}],
        constraints=["node.labels.class == backends"],
        healthcheck={"test": ["CMD-SHELL", "true"], "interval": "1s"},
    )
    assert spec["Mode"] == {"Replicated": {"Replicas": 3}}
    assert spec["Labels"] == {
        "com.docker-hosts.managed": "true",
        "com.docker-hosts.class": "backends",
    }
    task = spec["TaskTemplate"]
    assert task["Networks"] == [{"Target": "nid", "Aliases": []}]
    assert task["ContainerSpec"]["Secrets"] == [
        {
            "File": {"Name": "api", "UID": "0", "GID": "0", "Mode": 0o444},
            "SecretID": "sid",
            "SecretName": "api.v1",
        }
    ]
    assert task["ContainerSpec"]["Healthcheck"]["Interval"] == 10**9
    assert task["Placement"]["Constraints"] == ["node.labels.class == backends"]
    assert spec["EndpointSpec"] == {
        "Mode": "dnsrr",
        "Ports": [
            {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "host"}
        ],
    }


def test_healthcheck_without_a_form_runs_the_command(swarm_module):
    spec = spec_of(swarm_module, healthcheck={"test": "wget -q localhost"})
    assert spec["TaskTemplate"]["ContainerSpec"]["Healthcheck"]["Test"][0] == "CMD"


def docker_view(spec):
    """What Docker reports back: zero/empty values omitted, its own fields added."""
    reported = json.loads(json.dumps(spec))
    reported["TaskTemplate"]["ContainerSpec"]["Isolation"] = "default"
    reported["TaskTemplate"]["Runtime"] = "container"
    reported["TaskTemplate"]["ContainerSpec"].pop("Command")
    reported["TaskTemplate"]["ContainerSpec"].pop("Configs")
    reported["TaskTemplate"]["Resources"] = {"Limits": {}, "Reservations": {}}
    reported["UpdateConfig"].pop("MaxFailureRatio")
    reported["UpdateConfig"].pop("Delay")
    return reported


def test_same_spec_as_docker_reports_it_has_no_differences(swarm_module):
    spec = spec_of(swarm_module)
    assert swarm_module.spec_differences(spec, docker_view(spec)) == []


def test_changes_are_found_and_described(swarm_module):
    current = docker_view(spec_of(swarm_module))
    desired = spec_of(swarm_module, image="app:2", replicas=2, constraints=["node.role == worker"])
    described = swarm_module.describe_differences(desired, current)
    assert described["TaskTemplate.ContainerSpec.Image"] == {"old": "app:1", "new": "app:2"}
    assert described["Mode.Replicated.Replicas"] == {"old": 1, "new": 2}
    assert "TaskTemplate.Placement.Constraints" in described


def test_removed_settings_are_differences_too(swarm_module):
    current = docker_view(spec_of(swarm_module, constraints=["node.role == worker"], init=True))
    desired = spec_of(swarm_module)
    found = swarm_module.spec_differences(desired, current)
    assert "TaskTemplate.Placement.Constraints" in found
    assert "TaskTemplate.ContainerSpec.Init" in found


def test_service_present_masks_the_secrets_in_what_it_returns(swarm_module):
    states = load_module("states", "docker_swarm")
    states.__pillar__ = {"docker_secrets": SECRETS}
    states.__opts__ = {"test": False}
    settings = swarm_module.validate(minimal(web=web(env={"API_TOKEN": {"secret": "api_token"}})))

    def refuse(spec):
        env = spec["TaskTemplate"]["ContainerSpec"]["Env"]
        raise CommandExecutionError(f"cannot create service {spec['Name']}: bad env {env}")

    states.__salt__ = {
        "docker_settings.masked": load_module("modules", "docker_settings").masked,
        "docker_swarm.service_spec": swarm_module.service_spec,
        "docker_swarm.service": lambda name: None,
        "docker_swarm.service_create": refuse,
    }
    ret = states.service_present("web", settings["services"]["web"], "backends")
    assert ret["result"] is False
    assert ret["comment"] == "cannot create service web: bad env ['API_TOKEN=**********']"
    assert SECRETS["api_token"] not in json.dumps(ret)


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
    assert swarm_module.fingerprint_matches(one, b"value")
    assert not swarm_module.fingerprint_matches(one, b"other")
    assert not swarm_module.fingerprint_matches("garbage", b"value")


def test_scrubbing_masks_the_token(swarm_module):
    assert (
        swarm_module._scrub(f"error with {TOKEN} inside", TOKEN) == "error with ********** inside"
    )


def test_api_errors_name_the_action_and_mask_the_token(swarm_module):
    error = swarm_module.docker.errors.APIError(f"error with {TOKEN} inside")
    with (
        pytest.raises(CommandExecutionError) as raised,
        swarm_module._api_errors("swarm join failed", TOKEN),
    ):
        raise error
    assert str(raised.value) == "swarm join failed: error with ********** inside"
    assert raised.value.__cause__ is error
    with pytest.raises(KeyError), swarm_module._api_errors("swarm join failed"):
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


def test_the_cluster_record_stays_where_masters_keep_it(runner, tmp_path):
    node = load_module("runners", "node")
    node.__opts__ = runner.__opts__ = {"cachedir": str(tmp_path)}
    nodes = load_module("utils", "dockerhosts_nodes")
    runner.__utils__ = {"dockerhosts_nodes.locked": nodes.locked}
    runner.__salt__ = {
        name: getattr(node, name.partition(".")[2])
        for name in ("node.cache_file", "node.read_cache_record", "node.write_cache_record")
    }
    path = tmp_path / "docker-hosts-swarm" / "backends.json"
    assert runner._known_cluster("backends") is None
    path.write_text(json.dumps({"cluster_id": "c0", "since": 1}))  # as earlier versions wrote it
    assert runner._known_cluster("backends") == "c0"
    runner._remember_cluster("backends", "c1")
    record = json.loads(path.read_text())
    assert record["cluster_id"] == "c1" and set(record) == {"cluster_id", "since"}
    assert runner.forget("backends")["changes"] == {"cluster": {"old": "c1", "new": None}}
    assert not path.exists() and runner._known_cluster("backends") is None


# --- entitlement from the registry ---------------------------------------------------------


@pytest.fixture
def registry(runner, tmp_path):
    pki = tmp_path / "pki"
    (pki / "node_classes").mkdir(parents=True)
    (pki / "minions").mkdir()
    runner.__opts__ = {"pki_dir": str(pki)}
    runner.__salt__ = {}
    return pki


def register(pki, minion, class_name=None, key=True):
    if class_name:
        (pki / "node_classes" / minion).write_text(f"{class_name}\n")
    if key:
        (pki / "minions" / minion).write_text("-----BEGIN PUBLIC KEY-----\n")


def test_members_and_classes_come_from_the_registry(runner, registry):
    register(registry, "a", "backends")
    register(registry, "b", "backends")
    register(registry, "c", "dataserver")
    (registry / "node_classes" / "bad").write_text("not a class!\n")
    assert runner._members("backends") == ["a", "b"]
    assert runner._class_of("c") == "dataserver"
    assert runner._class_of("bad") is None
    assert runner._class_of("unknown") is None
    with pytest.raises(runner.SwarmError):
        runner._class_of("../minions/a")


def test_no_accepted_key_no_token(runner, registry):
    register(registry, "a", "backends", key=False)
    assert runner._public_key("a") is None


@pytest.mark.parametrize(
    ("minion", "message"),
    [
        ("grain-only", "gives it no class"),
        ("other-class", "gives it class 'dataserver'"),
        ("no-key", "its key is not accepted"),
        ("disabled", "does not enable swarm"),
    ],
)
def test_refusals(runner, registry, monkeypatch, minion, message):
    register(registry, "other-class", "dataserver")
    register(registry, "no-key", "backends", key=False)
    register(registry, "disabled", "backends")
    register(registry, "grain-only")
    run = runner._Run.__new__(runner._Run)
    run.class_name = "backends"
    run._settings = {"disabled": {"enabled": False}}
    assert message in run.refusal(minion)


def test_entitled_member(runner, registry):
    register(registry, "a", "backends")
    run = runner._Run.__new__(runner._Run)
    run.class_name = "backends"
    run._settings = {"a": {"enabled": True}}
    assert run.refusal("a") is None


def test_the_node_class_runner_is_used_when_present(runner, registry):
    register(registry, "a", "dataserver")  # the files say otherwise: the runner wins

    def get(minion):
        if minion == "broken":
            raise RuntimeError("registry unreadable")
        return {"a": "backends", "b": "backends"}.get(minion)

    runner.__salt__ = {
        "node_class.get": get,
        "node_class.members": lambda name: ["b", "a"] if name == "backends" else [],
    }
    assert runner._class_of("a") == "backends"
    assert runner._class_of("broken") is None
    assert runner._class_of("c") is None
    assert runner._members("backends") == ["a", "b"]
