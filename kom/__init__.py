"""kom: an MQTT client driver for SCADA systems and historians.

Every value from an MQTT broker becomes a typed, time-stamped, quality-flagged `Update`,
acknowledged to the broker only once the host has it; output tags become PUBLISH messages
whose completion is reported by QoS.
"""

from ._client import Kom, override_broker, tune_gc
from ._config import Config, LineConfig, StationConfig, TagConfig, load, loads
from ._errors import (
    AckError,
    AddressError,
    BrokerRefused,
    ConfigError,
    ConversionError,
    KomError,
    LineError,
    SinkError,
    TimeMaskError,
    WriteError,
)
from ._line import LineState, WriteResult
from ._model import Quality, Reason, Update, ValueType
from ._router import Route, Router, Rule
from ._station import StationState

__all__ = [
    "AckError",
    "AddressError",
    "BrokerRefused",
    "Config",
    "ConfigError",
    "ConversionError",
    "Kom",
    "KomError",
    "LineConfig",
    "LineError",
    "LineState",
    "Quality",
    "Reason",
    "Route",
    "Router",
    "Rule",
    "SinkError",
    "StationConfig",
    "StationState",
    "TagConfig",
    "TimeMaskError",
    "Update",
    "ValueType",
    "WriteError",
    "WriteResult",
    "load",
    "loads",
    "override_broker",
    "tune_gc",
]
