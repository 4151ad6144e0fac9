"""fly.toml, the Dockerfile and its wheel, checked against the README and setup."""

import configparser
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from fnmatch import fnmatch
from pathlib import Path

import pytest

from relay.config import Settings

REPO = Path(__file__).resolve().parents[2]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """Return (INSTRUCTION, arguments) pairs, continuation lines joined."""
    text = (REPO / "Dockerfile").read_text()
    logical, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    return [tuple(line.split(None, 1)) for line in logical]


def instructions(name: str, stage: str | None = None) -> list[str]:
    found, current_stage = [], None
    for instruction, arguments in dockerfile_instructions():
        if instruction == "FROM":
            current_stage = arguments.split()[-1]
        if instruction == name and stage in (None, current_stage):
            found.append(arguments)
    return found


@pytest.fixture(scope="module")
def fly() -> dict:
    with (REPO / "fly.toml").open("rb") as file:
        return tomllib.load(file)


# --- fly.toml -------------------------------------------------------------------


def test_fly_app_region_and_vm(fly):
    assert fly["app"] == "yaok-relay-ams"
    assert fly["primary_region"] == "ams"
    (vm,) = fly["vm"]
    assert vm["size"] == "shared-cpu-1x"
    assert vm["memory"] == "256mb"
    assert fly["build"]["dockerfile"] == "Dockerfile"


def test_fly_udp_service_and_concurrency(fly):
    (service,) = fly["services"]
    assert service["protocol"] == "udp"
    assert service["internal_port"] == 41641
    assert service["ports"] == [{"port": 41641}]
    assert service["concurrency"] == {
        "type": "connections",
        "soft_limit": 8000,
        "hard_limit": 10000,
    }


def test_fly_http_service_and_health_check(fly):
    http = fly["http_service"]
    assert http["internal_port"] == 8080
    assert http["force_https"] is True
    (check,) = http["checks"]
    assert check["method"].upper() == "GET"
    assert check["path"] == "/health"
    assert check["interval"] == "10s"
    assert check["timeout"] == "2s"
    assert check["grace_period"] == "5s"


def test_fly_mount_release_and_env(fly):
    assert fly["mounts"]["destination"] == "/data"
    assert fly["deploy"]["release_command"] == "yaok-relay maintenance"
    env = fly["env"]
    assert env["DATABASE_URL"] == "sqlite:///data/yaok_relay.db"
    assert env["RELAY_HOST"] == "fly-global-services"
    assert env["RELAY_PORT"] == "41641"
    assert env["HTTP_PORT"] == "8080"
    assert env["MAX_CONNECTIONS"] == "10000"
    assert env["RUST_LOG"] == "info"


def test_fly_env_is_valid_relay_configuration(fly):
    settings = Settings(**{key.lower(): value for key, value in fly["env"].items()})
    assert str(settings.database_path) == "/data/yaok_relay.db"
    assert settings.database_path.parent == Path(fly["mounts"]["destination"])
    assert settings.relay_port == fly["services"][0]["internal_port"]
    assert settings.http_port == fly["http_service"]["internal_port"]
    assert settings.max_connections == fly["services"][0]["concurrency"]["hard_limit"]


def test_fly_kill_timeout_exceeds_shutdown_timeout(fly):
    kill_timeout_s = int(fly["kill_timeout"].removesuffix("s"))
    assert fly["kill_signal"] == "SIGTERM"
    assert kill_timeout_s > int(fly["env"]["SHUTDOWN_TIMEOUT_S"])


# --- Dockerfile -----------------------------------------------------------------


def test_docker_python_version_matches_setup():
    (version,) = [a for a in instructions("ARG") if a.startswith("PYTHON_VERSION=")]
    docker_python = tuple(int(part) for part in version.split("=")[1].split("."))
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    requires = pyproject["project"]["requires-python"]
    assert requires == ">=" + ".".join(map(str, docker_python))
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert f"sys.version_info < {docker_python}" in setup
    stages = instructions("FROM")
    assert stages == [
        "python:${PYTHON_VERSION}-slim-bookworm AS build",
        "python:${PYTHON_VERSION}-slim-bookworm AS runtime",
    ]


def test_docker_installs_package_like_setup():
    """Both install the one package from pyproject.toml with pip, without extras."""
    assert instructions("RUN", "build") == ["pip wheel . --no-deps --wheel-dir /wheels"]
    installs = [r for r in instructions("RUN", "runtime") if "pip install" in r]
    assert installs == ["pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels"]
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert re.search(r"pip install .*-e '\.\[test\]'", setup)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    # Extras serve development only (tests, fuzzing, load tests).
    assert "test" in pyproject["project"]["optional-dependencies"]
    assert "[" not in installs[0]
    assert not list(REPO.glob("requirements*.txt"))


def test_docker_command_matches_readme():
    readme = (REPO / "README.md").read_text()
    first_command = next(
        line for line in readme.splitlines() if line.startswith("scripts/setup.sh")
    )
    assert "scripts/setup.sh && .venv/bin/yaok-relay serve" in first_command
    assert instructions("CMD") == ['["yaok-relay", "serve"]']
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["yaok-relay"] == "relay.cli:main"


def test_docker_ports_volume_user_and_health_check():
    assert instructions("EXPOSE") == ["41641/udp 8080"]
    assert instructions("VOLUME") == ["/data"]
    (users,) = [r for r in instructions("RUN", "runtime") if "useradd" in r]
    assert "--system" in users
    assert "chown yaok:yaok /data" in users
    env = " ".join(instructions("ENV", "runtime"))
    assert "DATABASE_URL=sqlite:///data/yaok_relay.db" in env
    (health,) = instructions("HEALTHCHECK")
    assert "--interval=10s" in health
    assert "--timeout=2s" in health
    assert "/health" in health
    assert "8080" in health
    assert "curl" not in health
    assert "wget" not in health


def test_docker_entrypoint_drops_root():
    (entrypoint,) = instructions("ENTRYPOINT")
    assert entrypoint == '["yaok-relay-entrypoint"]'
    copies = instructions("COPY", "runtime")
    assert "deploy/docker-entrypoint.sh /usr/local/bin/yaok-relay-entrypoint" in copies
    script = (REPO / "deploy" / "docker-entrypoint.sh").read_text()
    assert "setpriv" in script
    assert (REPO / "deploy" / "docker-entrypoint.sh").stat().st_mode & 0o111


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str) -> bool:
    return any(
        fnmatch(path, pattern) or path.startswith(pattern.rstrip("/") + "/")
        for pattern in dockerignore_patterns()
    )


def test_dockerignore_keeps_every_copied_file():
    for arguments in instructions("COPY"):
        if arguments.startswith("--from"):
            continue
        *sources, _ = arguments.split()
        for source in sources:
            assert (REPO / source).exists(), source
            assert not ignored(source), f"{source} is in .dockerignore"


def copy_build_context(destination: Path) -> None:
    """Copy what the build stage's COPY lines take, minus what .dockerignore drops."""
    for arguments in instructions("COPY", "build"):
        *sources, target = arguments.split()
        for source in sources:
            assert not ignored(source), f"{source} is in .dockerignore"
            origin = REPO / source
            place = destination / (target if not target.endswith("/") else source)
            if target in ("./", "."):
                place = destination / source
            if origin.is_dir():
                skip = shutil.ignore_patterns("__pycache__", "*.pyc")
                shutil.copytree(origin, place, ignore=skip)
            else:
                shutil.copy2(origin, place)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel the Dockerfile's build stage makes, built from the same files."""
    context = tmp_path_factory.mktemp("context")
    copy_build_context(context)
    (build_command,) = instructions("RUN", "build")
    wheels = tmp_path_factory.mktemp("wheels")
    command = shlex.split(build_command.replace("/wheels", str(wheels)))
    assert command[0] == "pip"
    result = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = wheels.glob("*.whl")
    return built


def test_wheel_contains_migrations_and_command(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(
        n.split("/")[-1] for n in names if fnmatch(n, "relay/migrations/*.sql")
    )
    assert shipped == sorted(p.name for p in (REPO / "migrations").glob("*.sql"))
    assert shipped
    (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
    assert (
        "yaok-relay = relay.cli:main"
        in zipfile.ZipFile(wheel).read(entry_points).decode()
    )
    assert not [n for n in names if n.startswith("tests/")]


def test_wheel_commands_import_from_wheel(wheel):
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(archive.read(entry_points).decode())
    commands = dict(parser["console_scripts"])
    assert commands
    for command, target in commands.items():
        module = target.split(":")[0].replace(".", "/")
        shipped = f"{module}.py" in names or f"{module}/__init__.py" in names
        assert shipped, f"{command} runs {target}, which the wheel does not contain"


def test_wheel_finds_its_own_migrations(wheel, tmp_path):
    zipfile.ZipFile(wheel).extractall(tmp_path)
    probe = (
        "import relay, relay.storage.migrate as m; "
        "print(relay.__file__); print(*[x.path for x in m.find_migrations()])"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    module_path, migrations = result.stdout.splitlines()
    assert module_path.startswith(str(tmp_path))
    assert migrations.startswith(str(tmp_path / "relay" / "migrations"))
