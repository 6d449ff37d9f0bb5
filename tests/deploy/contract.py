"""What the deployment files may name, read from the application itself, and small readers
for deploy/Dockerfile and deploy/compose.yaml (the tests of deploy/ share them)."""

from __future__ import annotations

import ast
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from tests.conftest import ROOT, require_tool

DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
#: The images' processes: Dockerfile target and compose service, and their command.
PROCESSES = {"web": "serve", "worker": "worker", "scheduler": "scheduler"}
#: Variables an image sets that are not dicomstl settings, and who reads them.
LIBRARY_VARIABLES = {
    "PATH": "the shell: the virtual environment's commands first",
    "HOME": "libraries that keep a cache under ~ (the tmpfs /tmp)",
    "PYTHONDONTWRITEBYTECODE": "Python: no .pyc writes on the read-only root",
    "PYTHONUNBUFFERED": "Python: log lines reach docker logs at once",
    "PIP_DISABLE_PIP_VERSION_CHECK": "pip, at build time",
    "DEBIAN_FRONTEND": "apt-get, at build time",
    "NUMBA_CACHE_DIR": "Numba: where the CPU engine's compiled kernels are cached",
    "CUPY_CACHE_DIR": "CuPy: where the GPU kernels are cached",
    "CUDA_CACHE_PATH": "the CUDA driver: its PTX compilation cache",
}
#: Settings whose values are secrets (keys, passwords, URLs with a password in them). They
#: come from the Secret "dicomstl-secrets" (Kubernetes) or deploy/.env (compose), and are never
#: written in a ConfigMap, a manifest, deploy/compose.yaml or an image.
SECRET_SETTINGS = frozenset({
    "DATABASE_URL", "REDIS_URL", "DICOMSTL_SECRET_KEY", "DICOMSTL_SMTP_URL",
    "DICOMSTL_STRIPE_SECRET_KEY", "DICOMSTL_STRIPE_WEBHOOK_SECRET"})
#: Settings whose names look like a secret's (``looks_secret``) but whose values are not.
NOT_SECRET = frozenset({"DICOMSTL_PUBLIC_URL", "DICOMSTL_RATE_PASSWORD_RESET"})
#: Values that are secrets whatever they are called: Stripe's secret, restricted and webhook
#: signing keys, and a URL with a password (``scheme://user:password@host``).
SECRET_VALUE = re.compile(r"\b(?:sk|rk)_(?:live|test)_\w+|\bwhsec_\w+"
                          r"|[a-z][a-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@")
#: What an operator writes for an empty value of deploy/.env.example that must have a shape
#: (``filled_env``; the other empty values get a random-looking word, as a password does).
FILLED_IN = {
    "DICOMSTL_PUBLIC_URL": "https://dicomstl.example.org",
    "DICOMSTL_SMTP_URL": "smtps://dicomstl:0123456789abcdef@smtp.example.org:465",
    "DICOMSTL_MAIL_FROM": "dicomstl <no-reply@dicomstl.example.org>",
    "DICOMSTL_CREDIT_PACKS": "10:price_PACK10:19 EUR,50:price_PACK50:79 EUR",
    "DICOMSTL_CLINIC_PRICE_ID": "price_CLINIC",
    "DICOMSTL_CLINIC_PRICE_TEXT": "249 EUR a month",
}


def looks_secret(variable: str) -> bool:
    """Whether a setting's name says its value may be a secret (a new setting so named must
    be sorted into SECRET_SETTINGS or NOT_SECRET)."""
    return bool(re.search(r"SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|_KEY$|_URL$|_DSN$",
                          variable))


def tool(name: str) -> str:
    """A command of this virtual environment (pip-installed), else from PATH (missing: a
    failure under CI, a skip elsewhere)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else require_tool(name)


def settings_variables() -> set[str]:
    """Every environment variable dicomstl/settings.py reads, found in its source: the names
    ``load_settings`` looks up itself, and ``DICOMSTL_<FIELD>`` for each other field of
    ``Settings``."""
    tree = ast.parse((ROOT / "dicomstl" / "settings.py").read_text())
    looked_up, fields, special = set(), set(), set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get" and getattr(node.func.value, "id", "") == "env"
                and node.args and isinstance(node.args[0], ast.Constant)):
            looked_up.add(node.args[0].value)
        elif isinstance(node, ast.ClassDef) and node.name == "Settings":
            fields = {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}
        elif (isinstance(node, ast.Assign) and len(node.targets) == 1
              and getattr(node.targets[0], "id", "") == "_SPECIAL"):
            special = ast.literal_eval(node.value)
    assert fields and special <= fields and looked_up, "settings.py changed shape"
    return looked_up | {f"DICOMSTL_{name.upper()}" for name in fields - special}


def served_routes(tmp_path: Path) -> set[str]:
    """The URL rules of the web app ``create_app`` builds."""
    from dicomstl.settings import load_settings
    from web import create_app

    settings = load_settings({"DICOMSTL_DATA_DIR": str(tmp_path / "var"),
                              "DICOMSTL_SECRET_KEY": "x" * 32})
    return {rule.rule for rule in create_app(settings).url_map.iter_rules()}


# --- deploy/Dockerfile --------------------------------------------------------------------

@dataclass
class Stage:
    """One stage of a Dockerfile: its base, name and instructions (keyword, arguments)."""

    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


def dockerfile_stages(text: str | None = None) -> dict[str, Stage]:
    """The stages of deploy/Dockerfile by name (continuation lines joined, comments out)."""
    text = DOCKERFILE.read_text() if text is None else text
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    stages: dict[str, Stage] = {}
    current = None
    for line in joined.splitlines():
        if not line.strip():
            continue
        keyword, _, args = line.strip().partition(" ")
        keyword, args = keyword.upper(), " ".join(args.split())
        if keyword == "FROM":
            base, _, name = args.partition(" AS ")
            current = stages[name or base] = Stage(base.strip(), name.strip() or base)
        elif current is not None:
            current.instructions.append((keyword, args))
    return stages


def exec_form(args: str) -> list[str]:
    """The argument list of an exec-form instruction (``["a", "b"]``); shell form split."""
    args = args.strip()
    if args.startswith("["):
        return yaml.safe_load(args)
    return shlex.split(args)


def env_of(args: str) -> dict[str, str]:
    """The variables of one ``ENV`` instruction (``A=1 B=2``)."""
    return dict(part.split("=", 1) for part in shlex.split(args))


def stage_chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """A stage and the stages it is built on, base first."""
    chain = [stages[name]]
    while chain[0].base in stages:
        chain.insert(0, stages[chain[0].base])
    return chain


def image_env(stages: dict[str, Stage], name: str) -> dict[str, str]:
    """What ``ENV`` a target's image holds (its own and its base stages')."""
    env: dict[str, str] = {}
    for stage in stage_chain(stages, name):
        for args in stage.all("ENV"):
            env.update(env_of(args))
    return env


def image_setting(stages: dict[str, Stage], name: str, keyword: str) -> str | None:
    """The last ``USER``, ``CMD``, ``HEALTHCHECK``… a target's image inherits or sets."""
    for stage in reversed(stage_chain(stages, name)):
        found = stage.last(keyword)
        if found is not None:
            return found
    return None


# --- deploy/compose.yaml ------------------------------------------------------------------

_VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
                       r"(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")


def env_example() -> dict[str, str]:
    """The variables of deploy/.env.example (comments and blank lines out)."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def interpolate(value, env: Mapping[str, str], used: set[str] | None = None):
    """``value`` with compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` filled in
    from ``env`` (recursively through lists and mappings); the names go into ``used``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, used) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, used) for v in value]
    if not isinstance(value, str):
        return value

    def fill(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match["name"], match["op"], match["arg"]
        if used is not None:
            used.add(name)
        current = env.get(name)
        empty = current is None or (current == "" and op and op.startswith(":"))
        if op and op.endswith("?") and empty:
            raise ValueError(f"{name}: {arg}")
        if op and op.endswith("-") and empty:
            return arg
        return current or ""

    return _VARIABLE.sub(fill, value)


def compose_raw() -> dict:
    """deploy/compose.yaml as YAML (merge keys resolved), before interpolation."""
    return yaml.safe_load(COMPOSE.read_text())


def compose(env: Mapping[str, str]) -> dict:
    """deploy/compose.yaml as compose sees it with the variables ``env``."""
    return interpolate(compose_raw(), env)


def filled_env() -> dict[str, str]:
    """deploy/.env.example with a value in each empty variable, as an operator fills it in."""
    return {name: value or FILLED_IN.get(name, f"{name.lower()}-0123456789abcdef")
            for name, value in env_example().items()}


def env_example_examples() -> dict[str, str]:
    """The example values deploy/.env.example gives in comments (``#   NAME=value``)."""
    found = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.fullmatch(r"#\s+([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            found[match[1]] = match[2].strip()
    return found


def compose_clear_text_secrets(raw: dict) -> list[str]:
    """Where deploy/compose.yaml (``raw``: before interpolation) writes a secret itself instead
    of taking it from deploy/.env: a secret setting (SECRET_SETTINGS) with no ``${VAR}``, a
    default after ``:-`` (in clear text in the file), text besides the references that is
    all of the value or a URL's password, or a reference to a variable that is not a secret
    of deploy/.env.example (empty there); and any value that reads as a secret
    (SECRET_VALUE) under any name."""
    example, problems = env_example(), []
    for name, service in (raw.get("services") or {}).items():
        for variable, value in service_env(service).items():
            where = f"{name}: {variable}"
            if SECRET_VALUE.search(_VARIABLE.sub("", value)):
                problems.append(f"{where}: a secret written in the file")
            if variable not in SECRET_SETTINGS:
                continue
            references = list(_VARIABLE.finditer(value))
            rest = _VARIABLE.sub("", value)
            if not references:
                problems.append(f"{where}: written in the file, not taken from deploy/.env")
            elif "://" in rest:
                if urlsplit(rest).password:
                    problems.append(f"{where}: the URL's password is written in the file")
            elif rest.strip():
                problems.append(f"{where}: part of the value is written in the file")
            for ref in references:
                if ref["op"] and ref["op"].endswith("-") and ref["arg"]:
                    problems.append(f"{where}: a default in clear text (${{{ref['name']}:-…}})")
                if example.get(ref["name"]) != "":
                    problems.append(f"{where}: {ref['name']} is not an empty variable of "
                                    "deploy/.env.example")
    return problems


def service_env(service: dict) -> dict[str, str]:
    """A service's ``environment`` (mapping or list form) as a mapping."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}
