"""Docker compose pieces for a federation: a hospital's service (an override file), and the compose-only files.

`docker-compose.yml` at the repository root defines hospital-1..3. A hospital registered later gets its own
override file with the same service shape, so the coordinator (or a hospital on its own host) starts it with

    docker compose -f docker-compose.yml -f federation/compose/<slug>.yml up -d <slug>

`fedcare institution register --compose` writes it with the kit. A hospital's service mounts its site directory
(`fedcare institution join`, then `install` of its kit: its own node key, the unsealed budget token and CKKS
secret), read-only; the coordinator's kit folder holds no private key and is not what a node starts from.
The module also runs as `fedcare compose --help` (`prepare` makes the files only compose needs).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from fedcare.superexec_secret import keep_superexec_secret

FEDERATION_VAR = "${FEDCARE_FEDERATION:-./federation}"
IMAGE = "${FEDCARE_IMAGE:-fedcare:latest}"
GPU_IMAGE = "${FEDCARE_GPU_IMAGE:-fedcare:gpu}"
CONTAINER_SITE = "/run/fedcare/site"  # the hospital's site directory, as `--kit` of `fedcare node start`
CONTAINER_STATE = "/var/lib/fedcare"
SITES_DIR = "./hospitals"  # default parent of the hospitals' site directories on a compose host
SUPEREXEC_SECRET = "superlink/superexec-secret"
SERVER_DIR = "server"  # what the ServerApp runner mounts: schema.json, and he-public.ctx in HE federations
HE_SERVER_FILES = ("he-public.ctx", "he-params.json")  # from `fedcare federation init --he` (he/server/)


def env_prefix(slug: str) -> str:
    """hospital-1 -> HOSPITAL_1: the prefix of the variables that override a hospital's data dir and limit."""
    return re.sub(r"[^A-Z0-9]", "_", slug.upper())


def hospital_service(
    name: str,
    *,
    slug: str,
    epsilon_limit: float,
    data_file: str = "data.csv",
    fleet_address: str = "superlink:9092",
    gpu: bool = False,
    site_dir: str | None = None,
) -> dict[str, Any]:
    """The compose service of one hospital: `fedcare node start` (its SuperNode and warm ClientApp executor),
    its site directory and data read-only, its own state volume. `site_dir`: the default of $<PREFIX>_SITE,
    ./hospitals/<slug>; a one-step kit (coordinator-made keys) is complete as it is and serves as the site."""
    prefix = env_prefix(slug)
    site_dir = site_dir or f"{SITES_DIR}/{slug}"
    node_config = (
        f'institution="{name}" data-path="/data/${{{prefix}_DATA_FILE:-{data_file}}}" '
        f'state-dir="{CONTAINER_STATE}/state" he-secret-context="{CONTAINER_SITE}/he-secret.ctx" '
        f"epsilon-limit=${{{prefix}_EPSILON_LIMIT:-{float(epsilon_limit)!r}}}"
    )  # he-secret-context: read in HE runs only
    service: dict[str, Any] = {
        "image": GPU_IMAGE if gpu else IMAGE,
        "init": True,
        "user": "${FEDCARE_UID:-10001}:${FEDCARE_GID:-10001}",
        "read_only": True,
        "tmpfs": ["/tmp"],
        "security_opt": ["no-new-privileges:true"],
        "environment": {
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        },
        "restart": "unless-stopped",
        "depends_on": {"superlink": {"condition": "service_healthy"}},
        "healthcheck": {
            "test": ["CMD", "python", "/opt/fedcare/deploy/healthcheck.py", "tcp", "127.0.0.1:9094"],
            "interval": "5s",
            "timeout": "5s",
            "retries": 24,
            "start_period": "10s",
        },
        "command": [  # the SuperNode and the warm ClientApp executor, stopped together (fedcare/node.py)
            "fedcare",
            "node",
            "start",
            f"--kit={CONTAINER_SITE}",
            f"--superlink={fleet_address}",
            f"--node-config={node_config}",
        ],
        "volumes": [
            f"${{{prefix}_SITE:-{site_dir}}}:{CONTAINER_SITE}:ro",
            f"${{{prefix}_DATA:-./federation/data/{slug}}}:/data:ro",
            f"{slug}-state:{CONTAINER_STATE}",
        ],
    }
    if gpu:
        service["deploy"] = {
            "resources": {"reservations": {"devices": [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]}}
        }
    return service


def render_hospital_override(name: str, *, slug: str, epsilon_limit: float, **options: Any) -> str:
    document = {
        "services": {slug: hospital_service(name, slug=slug, epsilon_limit=epsilon_limit, **options)},
        "volumes": {f"{slug}-state": {}},
    }
    header = (
        f"# {name}: its node (SuperNode and warm ClientApp executor), added to the federation's compose stack.\n"
        f"#   docker compose -f docker-compose.yml -f <this file> up -d {slug}\n"
        f"# Its site directory (`fedcare institution join`, `install`): "
        f"{options.get('site_dir') or f'{SITES_DIR}/{slug}'}, or set {env_prefix(slug)}_SITE.\n"
        f"# Its data: ./federation/data/{slug}/data.csv, or set {env_prefix(slug)}_DATA (folder) and "
        f"{env_prefix(slug)}_DATA_FILE.\n"
    )
    return header + yaml.safe_dump(document, sort_keys=False, default_flow_style=False, width=1000)


def write_hospital_override(
    federation_root: Path, name: str, *, slug: str, epsilon_limit: float, **options: Any
) -> Path:
    """Write FEDERATION/compose/<slug>.yml (no secrets in it: it only names the site folder) and return its path."""
    path = federation_root / "compose" / f"{slug}.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_hospital_override(name, slug=slug, epsilon_limit=epsilon_limit, **options))
    return path


def prepare_federation(federation_root: Path, *, schema: Path | None = None) -> list[Path]:
    """The files compose needs beyond `fedcare federation init`: the SuperExec secret (0600), and in `server/` (all the
    ServerApp runner mounts) the schema and, in an HE federation, the key-free CKKS context with its parameters."""
    made = []
    for name in HE_SERVER_FILES:
        source = federation_root / "he" / "server" / name
        if source.exists():
            target = federation_root / SERVER_DIR / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            made.append(target)
    secret = federation_root / SUPEREXEC_SECRET
    if keep_superexec_secret(secret):
        made.append(secret)
    if schema is not None:
        target = federation_root / SERVER_DIR / "schema.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(schema, target)
        made.append(target)
    return made


compose_app = typer.Typer(help="Docker compose files for a federation.", no_args_is_help=True, add_completion=False)


@compose_app.command()
def prepare(
    federation: Annotated[Path, typer.Argument(help="The federation directory (from `fedcare federation init`).")],
    schema: Annotated[Path | None, typer.Option(help="The data schema JSON the ServerApp uses.")] = None,
) -> None:
    """Make the SuperExec secret; copy the schema (and the HE server context) where docker-compose.yml mounts them."""
    for path in prepare_federation(federation, schema=schema):
        typer.echo(f"wrote {path}")


@compose_app.command()
def hospital(
    name: Annotated[str, typer.Argument(help="The institution, as registered.")],
    epsilon_limit: Annotated[float, typer.Option(min=1e-9, help="Its epsilon limit (the node enforces it too).")],
    slug: Annotated[
        str | None, typer.Option(help="Its kit folder name under institutions/ (default: from the name).")
    ] = None,
    federation: Annotated[Path, typer.Option("--federation", "-f", help="The federation directory.")] = Path("."),
    gpu: Annotated[bool, typer.Option("--gpu", help="Reserve an NVIDIA GPU (image: $FEDCARE_GPU_IMAGE).")] = False,
) -> None:
    """Write FEDERATION/compose/<slug>.yml: a compose override adding this hospital's SuperNode."""
    slug = slug or re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")  # as fedcare.federation_dir.slugify
    path = write_hospital_override(federation, name, slug=slug, epsilon_limit=epsilon_limit, gpu=gpu)
    typer.echo(f"wrote {path}; start it: docker compose -f docker-compose.yml -f {path} up -d {slug}")


if __name__ == "__main__":
    compose_app()
