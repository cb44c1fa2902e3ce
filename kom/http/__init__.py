"""kom's HTTP side (SPEC §13): Prometheus metrics, health, the latest values and a live page.

table = TagTable()
kom.add_callback(table)            # before kom.start()
server = StatusServer(kom, ("127.0.0.1", 8080), table, writer)
server.start()                     # serves on threads of its own
"""

from ._server import StatusServer, parse_address, serve
from ._state import TagTable, Trends
from ._status import health

__all__ = ["StatusServer", "TagTable", "Trends", "health", "parse_address", "serve"]
