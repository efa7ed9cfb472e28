"""Fuzzing the coordinator's files: a damaged federation.toml, admin-token or registry.json is a typed error.

`FederationDir.config()`, `.admin_token()` and `Registry.snapshot()` either read what they should or raise
FederationDirError (RegistryError is one) naming the file; the kit's node config round-trips through TOML.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedcare.federation_dir import CONFIG_FILE, FederationConfig, FederationDir, FederationDirError, slugify
from fedcare.kits import KitOptions, node_config_toml
from fedcare.registry import FORMAT, InstitutionRecord, Registry, RegistryError
from tests.support.hostile import hostile_floats, hostile_ints, hostile_text, json_texts, json_values, mutated_bytes

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
GOOD_CONFIG = tomli_w.dumps(FederationConfig(he=True, created_at="2026-01-01T00:00:00+00:00").to_toml()).encode()
GOOD_RECORD = asdict(InstitutionRecord(name="St Mary", slug="st-mary", epsilon_limit=8.0, delta=1e-5, fingerprint="ab"))
GOOD_REGISTRY = json.dumps({"format": FORMAT, "institutions": {"st-mary": GOOD_RECORD}}).encode()


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> FederationDir:
    root = tmp_path_factory.mktemp("fed")
    (root / "budget").mkdir()
    return FederationDir(root)


toml_values = st.one_of(
    hostile_text(max_size=20),
    hostile_ints(),
    hostile_floats(),
    st.booleans(),
    st.lists(hostile_text(max_size=8), max_size=3),
)


@st.composite
def config_files(draw: st.DrawFn) -> bytes:
    """federation.toml: damaged bytes, or well-formed TOML whose keys hold values of any type."""
    tables = {
        table: draw(st.dictionaries(st.sampled_from(keys), toml_values.filter(lambda v: v == v), max_size=len(keys)))
        for table, keys in {
            "federation": ["he", "created-at"],
            "superlink": ["control-address", "fleet-address", "dns-names", "ip-addresses"],
            "budget": ["url"],
        }.items()
    }
    well_formed = tomli_w.dumps(tables).encode("utf-8", "surrogatepass")
    return draw(st.one_of(st.just(well_formed), mutated_bytes(GOOD_CONFIG), st.binary(max_size=100)))


@FUZZ
@given(blob=config_files())
def test_any_federation_toml_reads_or_raises_federation_dir_error(fed: FederationDir, blob: bytes) -> None:
    fed.config_path.write_bytes(blob)
    try:
        config = fed.config()
    except FederationDirError as exc:
        assert CONFIG_FILE in str(exc)
        return
    assert isinstance(config.he, bool) and all(isinstance(n, str) for n in config.dns_names + config.ip_addresses)
    assert all(isinstance(v, str) for v in (config.control_address, config.fleet_address, config.budget_url))


@FUZZ
@given(blob=st.one_of(st.binary(max_size=80), hostile_text().map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_any_admin_token_file_reads_or_raises_federation_dir_error(fed: FederationDir, blob: bytes) -> None:
    fed.admin_token_file.write_bytes(blob)
    try:
        token = fed.admin_token()
    except FederationDirError as exc:
        assert "admin-token" in str(exc)
        return
    assert token and token.isprintable() and not any(c.isspace() for c in token)


@st.composite
def registry_files(draw: st.DrawFn) -> bytes:
    record = dict(GOOD_RECORD)
    for name in draw(st.lists(st.sampled_from(sorted(record)), max_size=2, unique=True)):
        record[name] = draw(json_values(max_leaves=2))
    if draw(st.booleans()):
        record.pop(draw(st.sampled_from(sorted(record))))
    document = draw(
        st.one_of(
            st.just({"format": FORMAT, "institutions": {"st-mary": record}}),
            st.fixed_dictionaries(
                {"format": st.one_of(st.just(FORMAT), json_values(max_leaves=1)), "institutions": json_values()}
            ),
        )
    )
    return draw(
        st.one_of(
            st.just(json.dumps(document).encode()),
            mutated_bytes(GOOD_REGISTRY),
            json_texts().map(lambda t: t.encode("utf-8", "surrogatepass")),
        )
    )


@FUZZ
@given(blob=registry_files())
def test_any_registry_file_reads_or_raises_registry_error(fed: FederationDir, blob: bytes) -> None:
    fed.registry_path.write_bytes(blob)
    try:
        records = Registry(fed.registry_path).snapshot()
    except RegistryError as exc:
        assert "registry.json" in str(exc)
        return
    for record in records.values():  # what the commands then use must work
        assert isinstance(record.pending, list) and isinstance(record.active, bool)
        assert isinstance(record.name, str) and isinstance(record.epsilon_limit, int | float)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
        (b"[]", "unknown registry format"),
        (json.dumps({"format": FORMAT, "institutions": {"a": {**GOOD_RECORD, "node_id": "7"}}}).encode(), "node_id"),
        (json.dumps({"format": FORMAT, "institutions": {"a": {**GOOD_RECORD, "surprise": 1}}}).encode(), "surprise"),
        (json.dumps({"format": FORMAT, "institutions": {"a": {**GOOD_RECORD, "budget": "lost"}}}).encode(), "budget"),
    ],
)
def test_registry_files_that_crashed_the_reader_raise_registry_error(
    fed: FederationDir, blob: bytes, message: str
) -> None:
    """Found by the fuzz: these raised UnicodeDecodeError, RecursionError, AttributeError or TypeError, or loaded
    a record that failed later."""
    fed.registry_path.write_bytes(blob)
    with pytest.raises(RegistryError, match=message):
        Registry(fed.registry_path).snapshot()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("federation = 3\n", r"\[federation\] must be a table"),
        ('[superlink]\ndns-names = "localhost"\n', "superlink.dns-names must be a list of strings"),
        ("[federation]\nhe = 'yes'\n", "federation.he must be a bool"),
        ("[budget\n", "is damaged"),
    ],
)
def test_federation_tomls_that_crashed_the_reader_raise_federation_dir_error(
    fed: FederationDir, text: str, message: str
) -> None:
    """Found by the fuzz: these raised TOMLDecodeError, AttributeError, or split a string into letters."""
    fed.config_path.write_text(text)
    with pytest.raises(FederationDirError, match=message):
        fed.config()


@FUZZ
@given(
    name=hostile_text(max_size=40).filter(lambda s: "\ud800" not in s),
    data_path=st.one_of(st.none(), hostile_text(max_size=40).filter(lambda s: "\ud800" not in s)),
    epsilon_limit=hostile_floats().filter(lambda f: f == f),
)
def test_a_kits_node_config_round_trips_through_toml(name: str, data_path: str | None, epsilon_limit: float) -> None:
    options = KitOptions(name=name, epsilon_limit=epsilon_limit, delta=1e-5, data_path=data_path)
    parsed = tomllib.loads(node_config_toml(options, root="/kit", he=True))
    assert parsed["institution"] == name and parsed["epsilon-limit"] == epsilon_limit
    assert parsed["data-path"] == (data_path or "/kit/data.csv")


@FUZZ
@given(name=hostile_text())
def test_slugify_gives_a_folder_name_or_value_error(name: str) -> None:
    try:
        slug = slugify(name)
    except ValueError:
        return
    assert slug and all(c.isascii() and (c.isalnum() or c == "-") for c in slug) and "/" not in slug
