"""deploy/compose.yaml, checked without a Docker engine: the compose specification's JSON
schema (vendored in deploy/schemas/), its variables, and what each service must be."""

from __future__ import annotations

import copy
import json
import subprocess

import jsonschema
import pytest
import yaml

from tests.deploy.contract import (
    DEPLOY,
    PROCESSES,
    ROOT,
    compose,
    compose_raw,
    dockerfile_stages,
    env_example,
    filled_env,
    image_env,
    interpolate,
)

SCHEMA = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
APP_SERVICES = ("migrate", "web", "scheduler", "worker", "worker-cpu")
SECRETS = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "DICOMSTL_SECRET_KEY",
           "GRAFANA_ADMIN_PASSWORD")


@pytest.fixture(scope="module")
def config() -> dict:
    return compose(filled_env())


def _errors(document: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(
        SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(document)]


def test_the_file_validates_against_the_compose_specification(config):
    assert _errors(compose_raw()) == []
    assert _errors(config) == []


@pytest.mark.parametrize("path, typo", [
    (("services", "web"), "read_onyl"),
    (("services", "worker", "deploy", "resources", "reservations"), "device"),
    (("services", "redis", "healthcheck"), "intervall"),
    ((), "volume"),
])
def test_a_misspelt_key_fails_the_schema(config, path, typo):
    broken = copy.deepcopy(config)
    node = broken
    for key in path:
        node = node[key]
    node[typo] = next(iter(node.values())) if node else "x"
    assert _errors(broken), f"{typo} passed the schema"


def test_every_variable_is_in_the_example_env_file_or_has_a_default():
    used: set[str] = set()
    interpolate(compose_raw(), filled_env(), used)
    example = env_example()
    text = (DEPLOY / "compose.yaml").read_text()
    for name in used:
        assert name in example or f"${{{name}:-" in text, f"{name}: not in deploy/.env.example"
    for name in SECRETS:
        assert example[name] == "", f"{name} must be empty in the example"
        with pytest.raises(ValueError, match=name):
            compose({**filled_env(), name: ""})  # compose refuses to start without it


def test_the_env_file_with_the_secrets_stays_out_of_git():
    done = subprocess.run(["git", "check-ignore", "-q", "deploy/.env"], cwd=ROOT)
    assert done.returncode == 0, "add deploy/.env (or .env) to .gitignore"
    assert subprocess.run(["git", "check-ignore", "-q", "deploy/.env.example"],
                          cwd=ROOT).returncode == 1


def test_no_secret_value_is_written_in_the_file():
    text = (DEPLOY / "compose.yaml").read_text()
    for line in text.splitlines():
        if any(word in line.lower() for word in ("password", "secret_key")):
            assert "${" in line or line.lstrip().startswith("#"), line


def test_each_process_is_built_from_its_target_and_runs_locked_down(config):
    stages = dockerfile_stages()
    volumes = set(config["volumes"])
    for name in APP_SERVICES:
        service = config["services"][name]
        target = "web" if name == "migrate" else name.removesuffix("-cpu")
        assert service["image"].split(":")[0] == f"dicomstl-{target}"
        if "build" in service:
            assert service["build"]["target"] == target and target in stages
            assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]
                    ).resolve() == (DEPLOY / "Dockerfile").resolve()
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert any(t.split(":")[0] == "/tmp" for t in service["tmpfs"]), name
        data_dir = image_env(stages, target)["DICOMSTL_DATA_DIR"]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        assert mounts[data_dir] == "data", name  # one data folder for every process
        assert set(mounts.values()) <= volumes, name
    worker_cache = image_env(stages, "worker")["NUMBA_CACHE_DIR"].rsplit("/", 1)[0]
    for name in ("worker", "worker-cpu"):
        mounts = {v.split(":")[1]: v.split(":")[0] for v in config["services"][name]["volumes"]}
        assert mounts[worker_cache] == "kernel-cache"


def test_the_schema_runs_before_the_processes_start(config):
    services = config["services"]
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["restart"] == "no"
    for name in ("web", "scheduler", "worker", "worker-cpu"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["postgres"]["condition"] == "service_healthy"
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, (name, dependency)


def test_the_gpu_worker_reserves_a_gpu_and_the_cpu_profile_runs_without(config):
    services = config["services"]
    gpu, cpu = services["worker"], services["worker-cpu"]
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert device["count"] == 1
    assert "deploy" not in cpu and cpu["environment"]["DICOMSTL_BACKEND"] == "cpu"
    assert gpu["image"] == cpu["image"]
    assert env_example()["COMPOSE_PROFILES"] in ("gpu", "cpu")
    # the warm shutdown lets the longest job finish
    from dicomstl.settings import Settings

    minutes = int(gpu["stop_grace_period"].removesuffix("m"))
    assert minutes * 60 > Settings.job_timeout_s


def test_redis_keeps_its_queues_in_an_append_only_file(config):
    redis = config["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert "redis-data:/data" in redis["volumes"]
    password = filled_env()["REDIS_PASSWORD"]
    assert command[command.index("--requirepass") + 1] == password
    assert f":{password}@redis:6379/" in config["services"]["web"]["environment"]["REDIS_URL"]


def test_prometheus_loads_the_repositorys_scrape_config_and_alert_rules(config):
    prometheus = config["services"]["prometheus"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    folder = DEPLOY / mounts["/etc/prometheus"]
    assert folder.resolve() == (DEPLOY / "prometheus").resolve()
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    scrape = yaml.safe_load((folder / "prometheus.yml").read_text())
    for rules in scrape["rule_files"]:
        assert (folder / rules).is_file(), rules


def test_grafana_gets_its_data_source_and_the_dashboard_from_files(config):
    grafana = config["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    provisioning = DEPLOY / mounts["/etc/grafana/provisioning"]
    assert provisioning.resolve() == (DEPLOY / "grafana" / "provisioning").resolve()
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090"
    assert "127.0.0.1:9090:9090" in config["services"]["prometheus"]["ports"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "dicomstl.yml").read_text())[
        "providers"]
    dashboard = next(src for target, src in mounts.items()
                     if target.startswith(provider["options"]["path"] + "/"))
    assert (DEPLOY / dashboard).resolve() == (DEPLOY / "grafana" / "dicomstl.json").resolve()
    variables = json.loads((DEPLOY / dashboard).read_text())["templating"]["list"]
    assert {"type": "datasource", "query": "prometheus"}.items() <= variables[0].items()


def test_only_the_front_ends_are_published_and_only_on_loopback(config):
    published = {name: s["ports"] for name, s in config["services"].items() if "ports" in s}
    assert set(published) == {"web", "prometheus", "grafana"}
    for name, ports in published.items():
        for port in ports:
            assert port.startswith("127.0.0.1:"), (name, port)


def test_the_images_of_others_are_pinned_by_exact_tag(config):
    from tests.deploy.test_dockerfile import EXACT_TAG

    for name, service in config["services"].items():
        if name not in APP_SERVICES:
            assert EXACT_TAG.match(service["image"]), (name, service["image"])


def test_every_process_is_in_the_file():
    assert {"web", "scheduler", "worker"} == set(PROCESSES)
    assert set(APP_SERVICES) <= set(compose_raw()["services"])
