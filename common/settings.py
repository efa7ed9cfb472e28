"""Typed run settings, read once from Flower's run config (kebab-case keys in pyproject.toml).

One object flows through the ServerApp. The part the hospitals need (`TrainingSettings`)
travels to them inside each message's config as a `common.round_config.RoundConfig`, so both
sides agree on one set of values. The defaults here are the only ones: pyproject.toml's
`[tool.flwr.app.config]` repeats them for people to read, and a test keeps the two equal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from common.dp_event import Accountant
from common.server_optimizer import ServerOptimizerName

# Each choice list is declared here once (the accountants with the DP event, in common/dp_event.py);
# pyproject.toml's comments and the client's error messages follow it.
PrivacyMode = Literal["plain", "he", "secagg"]
AmpMode = Literal["off", "bf16", "fp16", "auto"]
GradSampleMode = Literal["auto", "hooks", "ew", "functorch", "ghost"]
# How hospitals report validation and training metrics (docs/privacy.md, "Metrics"): "aggregate" (only
# inside the encrypted or masked sum: the server learns federation-level figures), "per-site" (each
# hospital's figures in clear), "auto" (aggregate in he and secagg modes, per-site in plain mode).
MetricsReporting = Literal["auto", "aggregate", "per-site"]
# How model weights travel in plaintext (docs/compression.md): "none" (float32) or "int8" (per-tensor scale,
# stochastic rounding). Hospitals' updates in plain mode, the global model sent down in plain and secagg modes;
# refused in he mode, whose updates and model travel as CKKS ciphertexts.
UpdateCompression = Literal["none", "int8"]
# How a `round-deadline` round averages updates of unequal local steps (docs/compute.md, "How a deadline round
# aggregates"): "fedavg" averages the trained models by sample count, as without a deadline (closest to equal-speed
# accuracy when measured, where FedNova's scaled-up short rounds overshoot); "fednova" (server/fednova.py) divides
# each update by its steps tau_i and takes tau_eff = sum p_i tau_i steps of their sample-weighted average, so that
# no site's objective is over-weighted. Hospitals need it in he and secagg modes, where they divide before the sum
# (common/fednova_sum.py).
DeadlineAggregation = Literal["fedavg", "fednova"]


class SettingsError(ValueError):
    """A run or node setting that is missing or out of range."""


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class TrainingSettings(BaseModel):
    """The part of a run's settings that every hospital needs to train (and score) a round.

    Declared once for both ends: the coordinator reads it inside `RunSettings`, and each message
    carries it to the hospitals as a `common.round_config.RoundConfig`, so a name, type, range or
    default cannot differ between the run config and what a hospital trains with.
    """

    model_config = ConfigDict(alias_generator=_kebab, populate_by_name=True, extra="forbid")

    num_rounds: int = Field(default=5, ge=1)
    local_epochs: int = Field(default=2, ge=1)
    batch_size: int = Field(default=16, ge=1)
    learning_rate: float = Field(default=0.03, gt=0)
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)
    seed: int = 42
    # Local differential privacy (DP-SGD at every hospital). On unless explicitly turned off.
    dp: bool = True
    noise_multiplier: float = Field(default=1.0, gt=0)
    target_epsilon: float = Field(
        default=3.0, ge=0
    )  # > 0: noise chosen once for the whole run; 0: use noise_multiplier
    max_grad_norm: float = Field(default=1.0, gt=0)
    delta: float = Field(default=1e-5, gt=0, lt=1)
    accountant: Accountant = "rdp"
    grad_sample_mode: GradSampleMode = "auto"
    amp: AmpMode = "auto"
    # How updates travel: "plain" (the server averages readable weights), "he" (CKKS: the server only
    # adds ciphertexts), "secagg" (Flower's SecAgg+: the server only learns the masked sum).
    privacy_mode: PrivacyMode = "plain"
    metrics: MetricsReporting = "auto"
    update_compression: UpdateCompression = "none"
    # How the round's average becomes the next global model (common/server_optimizer.py): "fedavg" takes it
    # as it is; "fedavgm" adds server momentum; "fedadam" Adam on the pseudo-gradient, with server-momentum
    # as its beta1. Run by the server (plain, secagg) or by every hospital after it decrypts (he).
    server_optimizer: ServerOptimizerName = "fedavg"
    server_learning_rate: float = Field(default=1.0, gt=0)
    server_momentum: float = Field(default=0.0, ge=0, lt=1)
    server_beta2: float = Field(default=0.99, ge=0, lt=1)  # fedadam's second-moment decay
    server_tau: float = Field(default=1e-3, gt=0)  # fedadam's floor under the second moment's root
    # Processes each hospital trains its local round with (docs/compute.md): 1 trains in the message's own
    # process; N > 1 spawns N workers under Opacus' distributed DP (gloo on CPU, NCCL on GPU), same privacy.
    local_workers: int = Field(default=1, ge=1, le=64)
    # How a round-deadline round aggregates (DeadlineAggregation above); no effect without round-deadline.
    deadline_aggregation: DeadlineAggregation = "fedavg"

    @model_validator(mode="after")
    def _metrics_fit_the_mode(self) -> TrainingSettings:
        if self.metrics == "aggregate" and self.privacy_mode == "plain":
            raise ValueError(
                "metrics 'aggregate' needs privacy-mode 'he' or 'secagg': in plain mode the server reads each "
                "hospital's update, so hiding its metrics would protect nothing; use metrics 'per-site' or 'auto'"
            )
        if self.update_compression == "int8" and self.privacy_mode == "he":
            raise ValueError(
                "update-compression 'int8' does not apply to privacy-mode 'he': updates and the global model "
                "travel as CKKS ciphertexts, which cannot be quantized; use update-compression 'none'"
            )
        return self

    @property
    def per_site_metrics(self) -> bool:
        """Whether each hospital's metrics travel in clear; otherwise they travel only inside the aggregate.

        Plain mode is always per-site: the server reads every update there, which says more about a
        hospital than its validation loss does."""
        return self.metrics == "per-site" or (self.metrics == "auto" and self.privacy_mode == "plain")

    @property
    def normalises_steps(self) -> bool:
        """Whether a scheduled round divides each update by its local steps (the FedNova choices): then hospitals
        in he and secagg modes send per-step models, and whoever reads the sum takes tau_eff steps of it."""
        return self.deadline_aggregation != "fedavg"


class RunSettings(TrainingSettings):
    """What the coordinator chooses for a run: the training settings above, and how the server runs it."""

    # Hospitals that must be connected for a round to start: a quorum, by default a majority of the demo's 3
    # (`quorum`). A run goes on with the survivors while they are at least this many (server/attendance.py).
    min_nodes: int = Field(default=2, ge=1)
    node_wait_timeout: float = Field(default=120.0, gt=0)
    round_timeout: float = Field(default=600.0, gt=0)
    poll_interval: float = Field(default=0.1, gt=0)
    # The privacy budget service (optional): where to report DP events, and the aggregator token's file.
    budget_url: str = ""
    budget_token_file: str = ""
    budget_ca_file: str = ""  # an https budget-url: the federation's ca.crt, the only CA trusted for it
    schema_path: str
    results_dir: str = "fedcare-runs"
    # Set by `fedcare run resume` only (docs/resume.md): the run this submission resumes, named by the Flower
    # run id of its first submission. That id stays the run's id: its directory, DP events and ledger rows.
    fedcare_run_id: str = Field(default="", pattern=r"^[0-9]*$")
    # HE mode: the server's key-free context (server/he-public.ctx from `fedcare he keygen`). Never the
    # hospitals' secret context, which is the node config's `he-secret-context`.
    he_public_context: str = ""
    # SecAgg+ mode (Flower's secure aggregation; docs/secagg.md). Each hospital splits its mask secrets into
    # num_shares shares; reconstruction_threshold of them recover a dropped hospital's masks.
    num_shares: int = Field(default=3, gt=2)
    reconstruction_threshold: int = Field(default=2, ge=2)
    clipping_range: float = Field(default=8.0, gt=0)  # weighted values are clipped to +-clipping_range
    quantization_range: int = Field(default=4194304, ge=2, lt=2**31)  # integer levels across 2*clipping_range
    max_weight: float = Field(default=1000.0, gt=0)  # the largest training-example count a hospital may have
    secagg_timeout: float = Field(default=60.0, gt=0)  # seconds per SecAgg+ stage (one stage includes training)
    # Seconds a hospital's local round should take (docs/compute.md): > 0 schedules each hospital's local steps
    # from its measured speed so a slow site shortens its own round, and aggregates as `deadline-aggregation`
    # says. 0: off.
    round_deadline: float = Field(default=0.0, ge=0)

    @property
    def fednova(self) -> bool:
        """Whether rounds aggregate normalised for unequal local steps: round-deadline with a FedNova choice."""
        return self.round_deadline > 0 and self.normalises_steps

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> RunSettings:
        if "he-context" in run_config:
            raise SettingsError(
                "run config: 'he-context' is now 'he-public-context' (the server's key-free he-public.ctx); "
                "rename the key"
            )
        try:
            settings = cls.model_validate(dict(run_config))
        except ValidationError as exc:
            raise SettingsError(describe_validation_error(exc, "run config")) from exc
        if not settings.schema_path:
            raise SettingsError("run config: 'schema-path' is empty; point it at the federation's schema JSON")
        if settings.privacy_mode == "he" and not settings.he_public_context:
            raise SettingsError(
                "run config: privacy-mode is 'he' but 'he-public-context' is empty; point it at the server's "
                "he-public.ctx from `fedcare he keygen --out DIR` (DIR/server/he-public.ctx)"
            )
        if settings.privacy_mode == "secagg":
            problems = _secagg_problems(settings)
            if problems:
                raise SettingsError("run config (privacy-mode 'secagg'): " + "; ".join(problems))
        return settings

    def run_id_for(self, flower_run_id: int) -> int:
        """The fedcare run id of a run Flower knows as `flower_run_id`: itself, unless this submission resumes one."""
        return int(self.fedcare_run_id) if self.fedcare_run_id else flower_run_id


def quorum(hospitals: int) -> int:
    """The default `min-nodes` for a federation of `hospitals`: a majority, so a minority of dead nodes
    never ends a run, and two halves of a split federation could never both go on."""
    return hospitals // 2 + 1


SECAGG_MODULUS = 2**32  # Flower's modulus_range: masked sums wrap around at this value


def _secagg_problems(s: RunSettings) -> list[str]:
    """What Flower's SecAgg+ would refuse or get wrong, said before any hospital is contacted."""
    problems = []
    if s.reconstruction_threshold >= s.num_shares:
        problems.append(
            f"reconstruction-threshold ({s.reconstruction_threshold}) must be below num-shares "
            f"({s.num_shares}): a secret split into {s.num_shares} shares"
        )
    if s.min_nodes < 2:
        problems.append(
            f"min-nodes is {s.min_nodes}; secure aggregation needs at least 2 hospitals per round "
            "(with one, the 'sum' is that hospital's update)"
        )
    if s.reconstruction_threshold > s.min_nodes:
        problems.append(
            f"reconstruction-threshold ({s.reconstruction_threshold}) is above min-nodes ({s.min_nodes}): a "
            f"round with {s.min_nodes} hospitals could never recover its masks; lower the threshold or "
            "raise min-nodes"
        )
    if s.round_deadline >= s.secagg_timeout:
        problems.append(
            f"round-deadline ({s.round_deadline:g} s) is not below secagg-timeout ({s.secagg_timeout:g} s): the "
            "stage that trains would stop waiting for a hospital before its own deadline; lower round-deadline or "
            "raise secagg-timeout"
        )
    if s.quantization_range * max(s.min_nodes, 2) >= SECAGG_MODULUS:
        problems.append(
            f"quantization-range ({s.quantization_range}) times min-nodes ({s.min_nodes}) reaches 2**32, "
            "where the masked sum wraps around; lower quantization-range"
        )
    return problems


class NodeSettings(BaseModel):
    """What a hospital sets for its own SuperNode (`--node-config`)."""

    model_config = ConfigDict(alias_generator=_kebab, populate_by_name=True, extra="ignore")

    institution: str = Field(min_length=1)
    data_path: Path
    state_dir: Path | None = None  # where the privacy accountant lives; default under the home directory
    epsilon_limit: float | None = Field(default=None, gt=0)
    he_secret_context: Path | None = None  # HE mode: the hospitals' secret context (hospital/he-secret.ctx)
    # TESTS AND BENCHMARKS ONLY (client/slowdown.py): every local step made this many times slower on purpose,
    # to stand for a slower hospital; warned about in the log every round it applies.
    test_slowdown: float = Field(default=1.0, ge=1.0)

    @model_validator(mode="after")
    def _default_state_dir(self) -> NodeSettings:
        if self.state_dir is None:
            slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in self.institution)
            self.state_dir = Path.home() / ".fedcare" / "state" / slug
        return self

    @classmethod
    def from_node_config(cls, node_config: dict[str, Any]) -> NodeSettings:
        if "he-context" in node_config:
            raise SettingsError(
                "node config: 'he-context' is now 'he-secret-context' (the hospitals' he-secret.ctx); "
                "rename the key in --node-config"
            )
        try:
            return cls.model_validate(dict(node_config))
        except ValidationError as exc:
            raise SettingsError(describe_validation_error(exc, "node config")) from exc


def describe_validation_error(exc: ValidationError, where: str) -> str:
    return f"{where}: " + "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
