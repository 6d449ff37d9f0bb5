"""What deploy/Dockerfile and deploy/compose.yaml pass and name is what the app reads and
serves: every setting is one dicomstl/settings.py reads (with a value it accepts), every port
is one the process listens on, every probe path a route of the web app, every metrics path
one the metrics servers answer."""

from __future__ import annotations

import urllib.request

import pytest
import yaml

from dicomstl.settings import load_settings
from dicomstl_cli import health
from tests.deploy.contract import (
    DEPLOY,
    LIBRARY_VARIABLES,
    NOT_SECRET,
    PROCESSES,
    SECRET_SETTINGS,
    SECRET_VALUE,
    compose,
    dockerfile_stages,
    exec_form,
    filled_env,
    image_env,
    image_setting,
    looks_secret,
    served_routes,
    service_env,
    settings_variables,
)
from tests.service.helpers import free_port

STAGES = dockerfile_stages()
APP_SERVICES = {"migrate": "web", "web": "web", "scheduler": "scheduler", "worker": "worker",
                "worker-cpu": "worker"}


@pytest.fixture(scope="module")
def config() -> dict:
    return compose(filled_env())


def _settings(env: dict[str, str], tmp_path):
    """The settings a process gets from ``env``, with its data folder moved to ``tmp_path``."""
    return load_settings({**env, "DICOMSTL_DATA_DIR": str(tmp_path / "var")}, prepare=False)


def test_the_settings_reader_is_read_from_its_source():
    read = settings_variables()
    assert {"DATABASE_URL", "REDIS_URL", "DICOMSTL_DATA_DIR", "DICOMSTL_SECRET_KEY",
            "DICOMSTL_PORT", "DICOMSTL_WORKER_METRICS_PORT", "DICOMSTL_BACKEND"} <= read
    assert "DICOMSTL_DATABASE_URL" not in read  # a special field is read by its own name


def test_every_setting_that_may_be_a_secret_is_known_as_one_or_not():
    """The deployment's secret checks (tests/deploy/test_compose.py, test_k8s.py) know every
    secret setting: a new one named like a secret must be sorted in contract.py."""
    read = settings_variables()
    assert read >= SECRET_SETTINGS | NOT_SECRET
    unsorted = {v for v in read if looks_secret(v)} - SECRET_SETTINGS - NOT_SECRET
    assert not unsorted, f"sort into contract.SECRET_SETTINGS or NOT_SECRET: {unsorted}"
    assert {"DICOMSTL_STRIPE_SECRET_KEY", "DICOMSTL_STRIPE_WEBHOOK_SECRET",
            "DICOMSTL_SMTP_URL"} <= SECRET_SETTINGS


@pytest.mark.parametrize("value, secret", [
    ("sk_live_51AbCdEf", True), ("rk_test_AbC", True), ("whsec_AbCdEf", True),
    ("smtp://mailer:hunter2@smtp.example.org:587", True), ("redis://:pw@redis:6379/0", True),
    ("smtp://smtp.example.org:587", False), ("https://dicomstl.example.org", False),
    ("10:price_PACK10:19 EUR", False), ("dicomstl <no-reply@dicomstl.example.org>", False),
])
def test_a_value_that_reads_as_a_secret_is_recognised(value, secret):
    assert bool(SECRET_VALUE.search(value)) == secret


@pytest.mark.parametrize("target", PROCESSES)
def test_no_image_carries_a_secret(target):
    env = image_env(STAGES, target)
    assert not set(env) & SECRET_SETTINGS, target
    assert not [v for v in env.values() if SECRET_VALUE.search(v)], target


@pytest.mark.parametrize("target", PROCESSES)
def test_every_variable_an_image_sets_is_read_by_someone(target):
    unknown = set(image_env(STAGES, target)) - settings_variables() - set(LIBRARY_VARIABLES)
    assert not unknown, f"{target}: nothing reads {sorted(unknown)}"


def test_every_setting_compose_passes_is_one_the_app_reads(config, tmp_path):
    read = settings_variables()
    for name, target in APP_SERVICES.items():
        env = service_env(config["services"][name])
        unknown = set(env) - read
        assert not unknown, f"{name}: not read by dicomstl/settings.py: {sorted(unknown)}"
        settings = _settings({**image_env(STAGES, target), **env}, tmp_path)  # values parse
        assert settings.database_url.startswith("postgresql://dicomstl:")
        assert settings.redis_url.startswith("redis://:") and settings.secret_key
        assert settings.metrics_host == "0.0.0.0"  # Prometheus scrapes from its container


@pytest.mark.parametrize("target", PROCESSES)
def test_each_image_exposes_the_ports_its_process_listens_on(target, tmp_path):
    settings = _settings(image_env(STAGES, target), tmp_path)
    exposed = {int(port) for args in STAGES[target].all("EXPOSE") for port in args.split()}
    listens = {getattr(settings, f"{target}_metrics_port")}
    if target == "web":
        listens.add(settings.port)
        assert settings.host == "0.0.0.0"  # reachable from outside the container
    assert exposed == listens


def test_the_published_web_port_is_the_one_it_listens_on(config, tmp_path):
    web = config["services"]["web"]
    settings = _settings({**image_env(STAGES, "web"), **service_env(web)}, tmp_path)
    (published,) = web["ports"]
    assert int(published.rsplit(":", 1)[1]) == settings.port


def test_prometheus_scrapes_each_process_where_it_serves_metrics(config, tmp_path):
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    services = config["services"]
    for job in scrape["scrape_configs"]:
        process = job["job_name"].removeprefix("dicomstl-")
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for group in job["static_configs"]:
            for target in group["targets"]:
                host, port = target.rsplit(":", 1)
                names = [n for n, s in services.items() if n == host or host in
                         (s.get("networks") or {}).get("default", {}).get("aliases", [])]
                assert names, f"{target}: no compose service answers to {host}"
                for name in names:
                    assert APP_SERVICES[name] == process, (job["job_name"], name)
                    env = {**image_env(STAGES, process), **service_env(services[name])}
                    settings = _settings(env, tmp_path)
                    assert int(port) == getattr(settings, f"{process}_metrics_port"), name


def test_the_metrics_servers_answer_the_path_prometheus_scrapes():
    from dicomstl.metrics import serve_metrics

    port = serve_metrics("127.0.0.1", free_port(), "DICOMSTL_TEST_METRICS_PORT")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        assert answer.status == 200 and b"# TYPE" in answer.read()


def test_the_health_checks_probe_routes_the_web_app_serves(tmp_path):
    routes = served_routes(tmp_path)
    assert {"/healthz", health.READINESS_PATH} <= routes
    for target in PROCESSES:
        probe = exec_form(image_setting(STAGES, target, "HEALTHCHECK").partition(" CMD ")[2])
        assert probe[2] in health.PROCESSES
