"""The capture plugin: records the traffic that passes and writes it as mocks, HAR or OpenAPI.

Every completed flow that passes the filters is redacted and appended to a journal (JSON lines,
`config.journal`, by default beside `config.output`) at once and flushed, so memory stays flat
and what was written survives Ctrl-C or a crash. The output (`config.output` in `config.format`)
is built from the journal at shutdown and on the command `backworks.capture.save`; a journal can
also be turned into one later with `backworks mock-from JOURNAL -o OUT`.

Under `backworks run --workers N` each worker writes a journal of its own (capture.jsonl →
capture.worker0.jsonl…) and leaves a note of it in the run's folder; the output is built from all
of them by the supervisor once every worker has stopped (and by `backworks.capture.save`).
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import IO, Literal

from mitmproxy import command, exceptions, http
from pydantic import BaseModel, Field, field_validator

from backworks_core.capture import formats
from backworks_core.capture.build import MATCH_HEADERS
from backworks_core.capture.model import Exchange
from backworks_core.capture.redact import RedactionRules, Redactor
from backworks_core.context import REQUEST_ID_HEADER
from backworks_core.files import open_append_private
from backworks_core.flowstate import peek_state
from backworks_core.loader import LoadedBlueprint
from backworks_core.model import HTTP_METHODS, BlueprintPath, Size, StrictModel
from backworks_core.paths import PathGlob
from backworks_core.plugins import Plugin, PluginRegistry
from backworks_core.telemetry import record_for
from backworks_core.worker_env import merge_captures, worker_identity, worker_journal, write_capture_manifest

logger = logging.getLogger(__name__)

OutputFormat = Literal["blueprint", "har", "openapi"]


class RedactConfig(StrictModel):
    enabled: bool = Field(True, description="redact credentials and token-like values (strongly advised)", examples=[False])
    headers: list[str] = Field(default_factory=list, description="more header names whose values are redacted", examples=[["X-Api-Key"]])
    fields: list[str] = Field(default_factory=list, description="more JSON/form field and query parameter names whose values are redacted", examples=[["password", "card_number"]])


class CaptureConfig(StrictModel):
    output: BlueprintPath = Field("captured.yaml", description="the file written at shutdown and by backworks.capture.save", examples=["orders-mocks.yaml"])
    format: OutputFormat = Field("blueprint", description="blueprint (mock endpoints), har (HAR 1.2) or openapi (OpenAPI 3.1)", examples=["openapi"])
    journal: BlueprintPath | None = Field(None, description="the JSON-lines record of every captured flow; default: OUTPUT.jsonl", examples=["capture.jsonl"])
    include: list[str] = Field(default_factory=lambda: ["*"], description="path globs to record (`*` crosses segments)", examples=[["/api/*"]])
    exclude: list[str] = Field(default_factory=list, description="path globs never recorded", examples=[["/api/health"]])
    methods: list[str] | None = Field(None, description="methods to record; default all", examples=[["GET", "POST"]])
    hosts: list[str] | None = Field(None, description="host globs to record (`*.example.com`); default all", examples=[["*.example.com"]])
    redact: RedactConfig = Field(default_factory=RedactConfig, description="what is hidden in the files written: credentials and token-like values, and the names listed", examples=[{"headers": ["X-Api-Key"]}])
    max_examples: int = Field(
        5,
        ge=1,
        le=1000,
        description="answers shown per endpoint: inline in a blueprint (the rest go to OUTPUT.data/, still answered), examples in OpenAPI",
        examples=[10],
    )
    match_headers: list[str] = Field(
        default_factory=lambda: list(MATCH_HEADERS),
        description="request headers a mock matches on where they changed the answer (credentials by fingerprint, conditional headers, Accept, Range…); replaces the default list",
        examples=[["authorization", "if-none-match", "x-tenant"]],
    )
    max_body: Size = Field("1m", validate_default=True, description="bodies larger than this are recorded empty", examples=["256k"])
    api_name: str | None = Field(None, description="the written blueprint's `name`; default: the capturing blueprint's name + ' (captured)'", examples=["Orders API"])
    log_flows: bool = Field(
        False,
        description="log one line per flow with its path and query redacted as the files are; `backworks capture` turns this on and mitmdump's own flow lines (unredacted) off",
        examples=[True],
    )

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        upper = [m.upper() for m in value]
        unknown = [m for m in upper if m not in HTTP_METHODS]
        if unknown:
            raise ValueError(f"unknown HTTP method {unknown[0]!r}")
        return upper

    @property
    def journal_path(self) -> str:
        return self.journal or self.output + ".jsonl"


class CaptureFilter:
    """The include/exclude/methods/hosts decision, compiled once per blueprint."""

    def __init__(self, config: CaptureConfig) -> None:
        self.include = [PathGlob(g) for g in config.include]
        self.exclude = [PathGlob(g) for g in config.exclude]
        self.methods = frozenset(config.methods) if config.methods is not None else None
        self.hosts = [re.compile(fnmatch.translate(h.lower())) for h in config.hosts] if config.hosts is not None else None

    def wants(self, method: str, host: str, path: str) -> bool:
        if self.methods is not None and method.upper() not in self.methods and "ANY" not in self.methods:
            return False
        if self.hosts is not None and not any(h.match(host.lower()) for h in self.hosts):
            return False
        if not any(p.match(path) for p in self.include):
            return False
        return not any(p.match(path) for p in self.exclude)


def exchange_from_flow(flow: http.HTTPFlow, max_body: int) -> Exchange | None:
    """The flow as `mock-from` would read it from a flow file, with bodies over `max_body` left out
    (a streamed body was never held, and is empty here too). Bodies are decoded bounded by
    `max_body` (backworks_core.bodies): a Content-Encoding bomb is recorded empty, never inflated.
    The answer is recorded as it came: without the X-Request-ID Backworks added for the client."""
    exchange = formats.exchange_from_flow(flow, max_body)
    if exchange is None:
        return None
    if (state := peek_state(flow)) is not None and state.id_added is flow.response:  # recorded as the upstream or handler answered
        exchange = replace(exchange, response_headers=_without_added_id(exchange.response_headers))
    if len(exchange.request_body) > max_body:
        exchange = replace(exchange, request_body=b"")
    if len(exchange.response_body) > max_body:
        exchange = replace(exchange, response_body=b"")
    return exchange


def _without_added_id(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers without the X-Request-ID `stamp_response` appended (the last one)."""
    for index in range(len(headers) - 1, -1, -1):
        if headers[index][0].lower() == REQUEST_ID_HEADER.lower():
            return headers[:index] + headers[index + 1 :]
    return headers


def flow_line(flow: http.HTTPFlow, rules: RedactionRules | Redactor, recorded: bool) -> str:
    """mitmdump's one-line flow summary, with the target redacted as the files redact it (by the
    run's redactor: a secret remembered from any flow is scrubbed here too)."""
    request = flow.request
    client = flow.client_conn.peername
    who = f"{client[0]}:{client[1]}: " if client else ""
    host = f"[{request.host}]" if ":" in request.host else request.host
    default = {"http": 80, "https": 443}.get(request.scheme)
    origin = "" if request.method.upper() == "CONNECT" else f"{request.scheme}://{host}{'' if request.port == default else f':{request.port}'}"
    target = f"{host}:{request.port}" if request.method.upper() == "CONNECT" else Redactor.of(rules).target(request.path)
    if flow.response is not None:
        answer = f"{flow.response.status_code} {flow.response.reason} {len(flow.response.raw_content or b'')}b"
    else:
        answer = f"error: {flow.error.msg}" if flow.error is not None else "no response"
    return f"{who}{request.method} {origin}{target} << {answer}{'' if recorded else ' (not recorded)'}"


class CapturePlugin(Plugin):
    """mitmproxy addon and Backworks plugin: the journal as flows complete, the output on save."""

    name = "capture"
    description = "records the traffic that passes, redacted, and writes it as mocks, HAR or OpenAPI"
    Config = CaptureConfig

    def __init__(self) -> None:
        self.config: CaptureConfig | None = None
        self.filter: CaptureFilter | None = None
        self.rules = RedactionRules()
        self.redactor = Redactor(self.rules)  # the run's secrets, remembered across flows
        self.max_body = 1 << 20
        self.api_name = "captured"
        self.recorded = 0
        self.not_recorded = 0  # this run: left out by the filters, or ended without a response
        self.emptied = 0  # this run: bodies over max_body recorded empty
        self._journal: IO[str] | None = None
        self._journal_path: str | None = None

    def apply_blueprint(self, config: BaseModel | None, blueprint: LoadedBlueprint) -> None:
        assert config is None or isinstance(config, CaptureConfig)
        self.config = config
        if config is None:
            self._close_journal()
            self.filter = None
            return
        self.filter = CaptureFilter(config)
        rules = RedactionRules.build(config.redact.enabled, config.redact.headers, config.redact.fields)
        if rules != self.rules:
            self.rules, self.redactor = rules, Redactor(rules)
        self.max_body = config.max_body
        self.api_name = config.api_name or f"{blueprint.settings.name} (captured)"
        if not config.redact.enabled:
            logger.warning("capture: redaction is off; credentials in the traffic will be written to %s", config.journal_path)
        journal = config.journal_path
        identity = worker_identity()
        if identity is not None:  # `backworks run --workers N`: a journal per worker, merged on stop
            journal = worker_journal(journal, identity[0])
            write_capture_manifest(identity[2], identity[0], self._manifest(config, journal))
        if journal != self._journal_path:
            self._close_journal()
            self._open_journal(journal)

    def _manifest(self, config: CaptureConfig, journal: str) -> dict[str, object]:
        """What the supervisor needs to build the output from every worker's journal."""
        redact = {"enabled": config.redact.enabled, "headers": config.redact.headers, "fields": config.redact.fields}
        return {
            "journal": str(Path(journal).absolute()),
            "output": str(Path(config.output).absolute()),
            "format": config.format,
            "api_name": self.api_name,
            "max_examples": config.max_examples,
            "match_headers": config.match_headers,
            "redact": redact,
        }

    def _open_journal(self, path: str) -> None:
        try:
            Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._journal = open_append_private(path)  # 0600, O_EXCL|O_NOFOLLOW; an existing one only if it is ours
        except OSError as exc:
            raise exceptions.OptionsError(f"capture: cannot write the journal {path}: {exc.strerror or exc}") from None
        self._journal_path = path
        logger.info("capture: recording to %s", path)

    def _close_journal(self) -> None:
        if self._journal is not None:
            self._journal.close()
        self._journal = None
        self._journal_path = None

    def observe(self, flow: http.HTTPFlow) -> None:
        """Called by the core once per finished flow."""
        if self._journal is None or self.filter is None or self.config is None:
            return
        record = record_for(flow)
        if record is not None and record.internal:
            return  # the status page and metrics are not the API
        request = flow.request
        wanted = flow.response is not None and self.filter.wants(request.method, request.pretty_host, request.path.split("?", 1)[0])
        recorded = exchange_from_flow(flow, self.max_body) if wanted else None  # None: a WebSocket, a CONNECT
        if recorded is None:
            self.not_recorded += 1
        else:
            response = flow.response
            self.emptied += bool(request.raw_content and not recorded.request_body) + bool(response and response.raw_content and not recorded.response_body)
            exchange = self.redactor.exchange(recorded)
            self._journal.write(exchange.to_json() + "\n")
            self._journal.flush()  # in the kernel's hands: a crash of this process loses nothing
            self.recorded += 1
        if self.config.log_flows:
            logger.info("%s", flow_line(flow, self.redactor, recorded is not None))

    def save(self) -> str:
        """Build the output from the journal; returns what was written."""
        if self.config is None or self._journal_path is None:
            raise exceptions.CommandError("capture is not configured (plugins.capture in the blueprint)")
        from backworks_core.capture.build import write_output

        if self._journal is not None:
            self._journal.flush()
        identity = worker_identity()
        if identity is not None:  # every worker's journal: the output is the run's, not this worker's
            summaries = merge_captures(identity[2], progress=logger.info, only_output=str(Path(self.config.output).absolute()), registry=_editor_registry())
            return "; ".join(summaries) or "nothing recorded yet"
        summary = write_output(
            [self._journal_path],
            self.config.output,
            self.config.format,
            name=self.api_name,
            max_examples=self.config.max_examples,
            rules=self.redactor,  # its secrets: scrubbed from flows recorded before they were seen
            match_headers=self.config.match_headers,
            registry=_editor_registry(),
        )
        if self.not_recorded:
            summary += f"; this run left {self.not_recorded} flow(s) unrecorded (filters, no response, WebSocket or CONNECT)"
        if self.emptied:
            summary += f"; this run recorded {self.emptied} body(ies) over max_body ({self.max_body} bytes) empty"
        logger.info("capture: %s", summary)
        return summary

    @command.command("backworks.capture.save")
    def save_command(self) -> str:
        """Write the capture's output (config.output, in config.format) from what was recorded so far."""
        return self.save()

    async def done(self) -> None:
        if worker_identity() is not None:  # the supervisor merges every worker's journal when all have stopped
            self._close_journal()
            return
        if self.config is not None and self._journal_path is not None and self.recorded:
            try:
                await asyncio.to_thread(self.save)
            except Exception:
                logger.exception("capture: writing %s failed; the journal %s keeps every flow", self.config.output, self._journal_path)
        self._close_journal()


def _editor_registry() -> PluginRegistry:
    """The plugins the written blueprint's editor schema describes (all a blueprint may use)."""
    from addons import installed_registry

    return installed_registry()
