"""The emulator's run-time settings, and the one place that checks a change to them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

#: Faults the gateway can inject. ``slow`` answers correctly, late; ``drop`` closes the connection unanswered.
FAULT_KINDS: tuple[str, ...] = ("429", "500", "502", "503", "drop", "slow")
#: Which service the emulator plays: OpenAI (``/v1``) or Azure OpenAI (``/openai/v1`` and the classic
#: ``/openai/...?api-version=`` paths, ``api-key`` auth, Azure's error bodies and line rules).
FLAVORS: tuple[str, ...] = ("openai", "azure")


@dataclass
class EmulatorConfig:
    """Run-time settings, changeable through ``PATCH /_emulator/config`` (``EmulatorHandle.configure``).

    :param phase_seconds: How long each of validating, in_progress, finalizing and cancelling lasts.
    :param completion_window_seconds: The (shortened) 24h window; an unfinished batch then expires.
    :param latency_ms: Added to every ``/v1`` answer.
    :param fault_rate: Fraction of ``/v1`` requests answered with a transient fault, drawn at random.
    :param fault_kinds: Faults to draw from: ``429``, ``500``, ``502``, ``503``, ``drop``, ``slow``.
    :param retry_after: ``Retry-After`` seconds sent with a 429.
    :param slow_seconds: How long a ``slow`` fault holds a request before processing it. The request is
        processed even if its client hung up meanwhile, as a buffering gateway would forward it.
    :param fault_after_processing: Process a faulted POST first, then fault the answer (an ambiguous failure).
        Never for a 429: the real API's rate limiter refuses a request before the service sees it.
    :param api_key: When set, the only key accepted.
    :param seed: Seed of the random fault draw. Setting it (even to the same value) re-seeds the draw, so a
        test that sets it sees the same faults on every run; ``None`` seeds from the system.
    :param fault_script: Faults for the next ``/v1`` requests, one per request (after auth), in order, before
        the random draw applies: e.g. ``["500", "", "drop"]`` faults the first with a 500, lets the second
        through (``""`` is no fault) and drops the third. Entries are used up; the rest shows in the config.
    :param expire_after_fraction: When set (0 to 1), every batch created from then on ends ``expired`` instead
        of completing, at the end of its ``in_progress`` phase, with the first ``floor(fraction x total)``
        requests (in input order) run and the rest in the error file as ``batch_expired``. ``None``: off.
    :param transient_failure_rate: Chance (0 to 1) that each request run in a batch fails transiently: an
        error-file line with a 500 ``server_error`` or a 429 ``rate_limit_exceeded`` response (see
        :func:`~openai_batch_emulator.results.transient_line`), not billed. The draw is
        deterministic given ``seed``, the ``custom_id`` and its attempt number, so the same request in a new
        batch gets a new, independent draw.
    :param transient_failure_attempts: When above 0, every request fails transiently on its first this-many
        attempts and then succeeds (unless ``transient_failure_rate`` draws a failure). Attempts are counted
        per ``custom_id`` across batches, from the last reset; a request counts as attempted once its batch
        has run it (not when it expired or was cancelled before running).
    :param enqueued_token_limit: When set, the organisation's enqueued-token limit: a batch whose estimated
        input tokens, added to those of the batches admitted before it and still running (``in_progress`` or
        ``finalizing``) at the end of its ``validating``, exceed it fails then with ``token_limit_exceeded``, as
        the real API does (never billed). The estimate is the emulator's own reading (see
        :func:`~openai_batch_emulator.store.estimate_input_tokens`). ``None``: no limit.
    :param flavor: ``openai`` or ``azure`` (see :data:`FLAVORS`). Azure: paths ``/openai/v1/...`` and
        ``/openai/...?api-version=...``; the key in an ``api-key`` header (or any ``Authorization: Bearer``
        token, an Entra ID token, checked against ``api_key`` when that is set); ``apim-request-id`` on every
        answer; Azure's error bodies; input lines whose ``url`` has no ``/v1``, one deployment (``model``) per
        file, up to 100,000 requests.
    """

    phase_seconds: float = 1.0
    completion_window_seconds: float = 86_400.0
    latency_ms: float = 0.0
    fault_rate: float = 0.0
    fault_kinds: list[str] = field(default_factory=lambda: ["429", "500", "502", "503", "drop"])
    retry_after: float = 1.0
    slow_seconds: float = 30.0
    fault_after_processing: bool = False
    api_key: str | None = field(default=None, repr=False)
    seed: int | None = None
    fault_script: list[str] = field(default_factory=list)
    expire_after_fraction: float | None = None
    transient_failure_rate: float = 0.0
    transient_failure_attempts: int = 0
    enqueued_token_limit: int | None = None
    flavor: str = "openai"

    def public(self) -> dict[str, Any]:
        """The settings as JSON, with the key only said to be set."""
        data = asdict(self)
        data["api_key"] = "set" if self.api_key else None
        return data

    def apply(self, changes: dict[str, Any]) -> None:
        """Check every change, then apply them all (a refused change leaves the settings as they were).

        :raises ValueError: naming the setting, for an unknown name or a value of the wrong kind.
        """
        checked = {name: _check(name, value) for name, value in changes.items()}
        for name, value in checked.items():
            setattr(self, name, value)


_NUMBERS = {
    "phase_seconds",
    "completion_window_seconds",
    "latency_ms",
    "fault_rate",
    "retry_after",
    "slow_seconds",
    "transient_failure_rate",
}
#: Settings that are fractions: between 0 and 1.
_FRACTIONS = {"fault_rate", "transient_failure_rate", "expire_after_fraction"}


def _check(name: str, value: Any) -> Any:
    known = {f.name for f in fields(EmulatorConfig)}
    if name not in known:
        raise ValueError(f"unknown setting {name!r}; known: {sorted(known)}")
    if name == "expire_after_fraction" and value is None:
        return None
    if name in _NUMBERS or name == "expire_after_fraction":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{name} must be a number >= 0; got {value!r}")
        if name in _FRACTIONS and value > 1:
            raise ValueError(f"{name} must be between 0 and 1; got {value!r}")
        return float(value)
    if name == "enqueued_token_limit":
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"enqueued_token_limit must be an integer >= 1 or null; got {value!r}")
        return value
    if name == "transient_failure_attempts":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"transient_failure_attempts must be an integer >= 0; got {value!r}")
        return value
    if name in ("fault_kinds", "fault_script"):
        allowed = set(FAULT_KINDS) | ({""} if name == "fault_script" else set())
        if not isinstance(value, list) or not all(isinstance(kind, str) and kind in allowed for kind in value):
            raise ValueError(f"{name} must be a list of {', '.join(FAULT_KINDS)}; got {value!r}")
        return list(value)
    if name == "seed" and value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"seed must be an integer or null; got {value!r}")
    if name == "fault_after_processing" and not isinstance(value, bool):
        raise ValueError(f"fault_after_processing must be true or false; got {value!r}")
    if name == "flavor" and value not in FLAVORS:
        raise ValueError(f"flavor must be one of {', '.join(FLAVORS)}; got {value!r}")
    if name == "api_key" and value is not None and not isinstance(value, str):
        raise ValueError("api_key must be a string or null")
    return value
