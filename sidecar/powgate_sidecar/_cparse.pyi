# The compiled request parser (_cparse.pyx): the same contract as _parse.RequestParser.
from ._parse import ParserProtocol

class RequestParser:
    url: bytes
    fields: list[tuple[bytes, bytes]]
    names: list[bytes]
    method: str
    version: str
    keep_alive: bool
    content_length: int | None
    coding_at: int
    expect_at: int
    hosts: int
    def __init__(self, protocol: ParserProtocol) -> None: ...
    def feed_data(self, data: bytes | memoryview) -> None: ...
