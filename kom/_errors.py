"""The exceptions kom raises: one root, a few kinds by what failed."""

from __future__ import annotations

from collections.abc import Sequence


class KomError(Exception):
    """Root of every error kom raises on purpose."""


class ConfigError(KomError, ValueError):
    """A configuration was refused; `errors` lists every problem with its key path."""

    def __init__(self, errors: Sequence[str], source: str | None = None) -> None:
        self.errors = tuple(errors)
        self.source = source
        where = f"{source}: " if source else ""
        count = len(self.errors)
        head = f"{where}{count} configuration error{'s' if count != 1 else ''}"
        super().__init__(head + "".join(f"\n  {e}" for e in self.errors))


class AddressError(ConfigError):
    """A tag address could not be parsed or does not fit the tag's type."""


class TimeMaskError(KomError, ValueError):
    """A timestamp did not match its mask, or a mask is malformed."""


class ConversionError(KomError, ValueError):
    """A payload value could not be converted to a tag's type; `found` says what was there."""

    def __init__(self, message: str, found: object = None) -> None:
        self.found = found
        super().__init__(message)


class LineError(KomError, ConnectionError):
    """A line could not connect, or lost its connection; `line` names it."""

    def __init__(
        self, message: str, line: str | None = None, reason_code: int | None = None
    ) -> None:
        self.line = line
        self.reason_code = reason_code
        super().__init__(message)


class BrokerRefused(LineError):
    """The broker refused CONNECT (bad credentials, identifier rejected, not authorised)."""


class WriteError(KomError, RuntimeError):
    """A write failed; `reason` is one of timeout, not-connected, not-output, topic, rejected."""

    def __init__(self, message: str, tag: str | None = None, reason: str = "rejected") -> None:
        self.tag = tag
        self.reason = reason
        super().__init__(message)


class AckError(KomError, ValueError):
    """An ACK_ID write did not match the message the station is holding."""


class SinkError(KomError, OSError):
    """A sink could not open or store a batch; `sink` names it, `reason` is disk-full, closed
    (standard output whose reader went away: no retry can help) or error."""

    def __init__(self, message: str, sink: str | None = None, reason: str = "error") -> None:
        self.sink = sink
        self.reason = reason
        super().__init__(message)
