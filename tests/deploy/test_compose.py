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
    _VARIABLE,
    DEPLOY,
    PROCESSES,
    ROOT,
    SECRET_SETTINGS,
    compose,
    compose_clear_text_secrets,
    compose_raw,
    dockerfile_stages,
    env_example,
    env_example_examples,
    filled_env,
    image_env,
    interpolate,
    service_env,
)

SCHEMA = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
APP_SERVICES = ("migrate", "web", "scheduler", "worker", "worker-cpu")
SECRETS = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "DICOMSTL_SECRET_KEY",
           "GRAFANA_ADMIN_PASSWORD")
#: What compose refuses to start without: the secrets, and the site's address (links in
#: e-mails would otherwise be made on whatever Host header a request brings).
REQUIRED = (*SECRETS, "DICOMSTL_PUBLIC_URL")
#: The web app's optional secrets (mail, payments): empty in the example, and off when empty.
WEB_SECRETS = ("DICOMSTL_SMTP_URL", "DICOMSTL_STRIPE_SECRET_KEY",
               "DICOMSTL_STRIPE_WEBHOOK_SECRET")


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
    for name in REQUIRED:
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
        if any(word in line.lower() for word in ("password", "secret", "smtp_url")):
            assert "${" in line or line.lstrip().startswith("#"), line
    assert compose_clear_text_secrets(compose_raw()) == []
    # every secret setting a service gets is taken whole (or its password) from deploy/.env
    passed = {v for s in compose_raw()["services"].values() for v in service_env(s)}
    assert {"DATABASE_URL", "REDIS_URL", "DICOMSTL_SECRET_KEY", *WEB_SECRETS} <= passed
    assert passed >= SECRET_SETTINGS


@pytest.mark.parametrize("variable, value", [
    ("DICOMSTL_STRIPE_SECRET_KEY", "sk_live_51AbCdEfGh"),  # the key itself
    ("DICOMSTL_STRIPE_WEBHOOK_SECRET", "${DICOMSTL_STRIPE_WEBHOOK_SECRET:-whsec_AbCd}"),
    ("DICOMSTL_SMTP_URL", "smtp://mailer:hunter2@smtp.example.org:587"),
    ("DICOMSTL_SMTP_URL", "smtp://mailer:hunter2@${SMTP_HOST}:587"),  # the password, written
    ("DICOMSTL_SECRET_KEY", "${DICOMSTL_PROXY_HOPS}"),  # not a secret of deploy/.env
    ("DATABASE_URL", "postgresql://dicomstl:hunter2@postgres:5432/dicomstl"),
    ("DICOMSTL_MAIL_FROM", "smtps://mailer:hunter2@smtp.example.org"),  # any name
])
def test_a_secret_written_in_the_file_is_found(variable, value):
    raw = copy.deepcopy(compose_raw())
    raw["services"]["web"]["environment"][variable] = value
    assert compose_clear_text_secrets(raw), f"{variable}: {value} passed"
    listed = copy.deepcopy(compose_raw())  # the list form of environment too
    env = listed["services"]["scheduler"]["environment"]
    listed["services"]["scheduler"]["environment"] = [
        f"{k}={v}" for k, v in {**env, variable: value}.items()]
    assert compose_clear_text_secrets(listed)


def test_mail_and_payments_are_the_web_apps_and_off_until_their_secrets_are_set(tmp_path):
    from dicomstl.settings import load_settings

    example = env_example()
    for name in WEB_SECRETS:
        assert example[name] == "", f"{name} must be empty in the example"
    raw = compose_raw()["services"]
    for name in APP_SERVICES:
        passed = set(service_env(raw[name]))
        if name == "web":
            assert set(WEB_SECRETS) <= passed
        else:  # workers and the scheduler never send mail or call Stripe
            assert not passed & {*WEB_SECRETS, "DICOMSTL_CREDIT_PACKS"}, name
    unset = {**filled_env(), **{name: "" for name in WEB_SECRETS}}
    web = service_env(compose(unset)["services"]["web"])
    settings = load_settings({**web, "DICOMSTL_DATA_DIR": str(tmp_path)}, prepare=False)
    assert not settings.billing_enabled and settings.smtp_url == ""
    web = service_env(compose(filled_env())["services"]["web"])
    settings = load_settings({**web, "DICOMSTL_DATA_DIR": str(tmp_path)}, prepare=False)
    assert settings.billing_enabled and settings.smtp_url.startswith("smtps://")
    assert settings.public_url == filled_env()["DICOMSTL_PUBLIC_URL"]


def test_an_empty_optional_value_means_the_apps_default():
    """A default after ``:-`` for a setting is the app's own default, so an empty value in
    deploy/.env (or none) is the same as not passing the setting."""
    from dicomstl.settings import load_settings

    defaults = load_settings({}, prepare=False)
    seen = 0
    for name in APP_SERVICES:
        for variable, value in service_env(compose_raw()["services"][name]).items():
            match = _VARIABLE.fullmatch(value)
            if not (variable.startswith("DICOMSTL_") and match and match["op"] == ":-"):
                continue
            field = variable.removeprefix("DICOMSTL_").lower()
            given = load_settings({variable: match["arg"]}, prepare=False)
            assert getattr(given, field) == getattr(defaults, field), (name, variable)
            seen += 1
    assert seen >= 10


def test_the_examples_in_the_example_env_file_are_valid_settings_and_placeholders(tmp_path):
    from dicomstl.settings import load_settings

    examples = env_example_examples()
    assert {"DICOMSTL_CREDIT_PACKS", "DICOMSTL_CLINIC_PRICE_ID",
            "DICOMSTL_CLINIC_PRICE_TEXT"} <= set(examples)
    assert set(examples) <= set(env_example())  # each documents a variable of the file
    settings = load_settings({**examples, "DICOMSTL_DATA_DIR": str(tmp_path)}, prepare=False)
    assert settings.packs and settings.clinic_price_id
    for price in [p.price_id for p in settings.packs] + [settings.clinic_price_id]:
        assert price.removeprefix("price_").isupper(), f"{price}: not a placeholder id"


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
