"""The iRODS native protocol, as the stand-in speaks it.

Framing (iRODS "native" protocol, irodsProt 1 = XML packing):

    4 bytes   big-endian length of the header
    header    <MsgHeader_PI><type>T</type><msgLen>M</msgLen><errorLen>E</errorLen>
              <bsLen>B</bsLen><intInfo>I</intInfo></MsgHeader_PI>
    M bytes   the main message: one XML-packed structure (e.g. <GenQueryInp_PI>...)
    E bytes   an error stack (<RError_PI>) on failed API replies
    B bytes   the byte stream (file contents for reads and writes)

For an API request ``type`` is ``RODS_API_REQ`` and ``intInfo`` the API number; the reply is
``RODS_API_REPLY`` with ``intInfo`` the status (an iRODS error code when negative).

Structures are packed as XML elements named after the packing instruction, one child element
per field in instruction order; ``bin`` fields are base64; pointer fields left NULL are omitted;
strings escape ``& < > " '`` as XML entities (as iRODS 4.2.9 and later do).
"""

from __future__ import annotations

import base64
import json
import socket
import struct
import xml.etree.ElementTree as ET
from dataclasses import dataclass

# --- API numbers (iRODS apiNumber.h) that the stand-in answers --------------------------------
API = {
    "DATA_OBJ_CREATE_AN": 601,
    "DATA_OBJ_OPEN_AN": 602,
    "DATA_OBJ_UNLINK_AN": 615,
    "DATA_OBJ_CHKSUM_AN": 629,
    "OBJ_STAT_AN": 633,
    "DATA_OBJ_CLOSE_AN": 673,
    "DATA_OBJ_LSEEK_AN": 674,
    "DATA_OBJ_READ_AN": 675,
    "DATA_OBJ_WRITE_AN": 676,
    "COLL_CREATE_AN": 681,
    "GEN_QUERY_AN": 702,
    "AUTH_REQUEST_AN": 703,
    "AUTH_RESPONSE_AN": 704,
    "MOD_AVU_METADATA_AN": 706,
    "MOD_ACCESS_CONTROL_AN": 707,
    "AUTHENTICATION_APN": 110000,
}
API_NAMES = {number: name for name, number in API.items()}

# --- iRODS error codes (rodsErrorTable.h) the stand-in returns -------------------------------
ERRORS = {
    "SYS_UNMATCHED_API_NUM": -12000,
    "SYS_NO_API_PRIV": -13000,
    "SYS_API_INPUT_ERR": -14000,
    "SYS_FILE_DESC_OUT_OF_RANGE": -19000,
    "SYS_BAD_FILE_DESCRIPTOR": -23000,
    "SYS_NOT_SUPPORTED": -66000,
    "SYS_INTERNAL_ERR": -154000,
    "SYS_INVALID_INPUT_PARAM": -130000,
    "USER_FILE_DOES_NOT_EXIST": -310000,
    "OVERWRITE_WITHOUT_FORCE_FLAG": -312000,
    "USER_INPUT_PATH_ERR": -317000,
    "USER_PATH_EXCEEDS_MAX": -346000,
    "USER_ACCESS_DENIED": -350000,
    "OBJ_PATH_DOES_NOT_EXIST": -358000,
    "CAT_SQL_ERR": -806000,
    "CAT_NO_ROWS_FOUND": -808000,
    "CATALOG_ALREADY_HAS_ITEM_BY_THAT_NAME": -809000,
    "CAT_UNKNOWN_COLLECTION": -814000,
    "CAT_INVALID_ARGUMENT": -816000,
    "CAT_UNKNOWN_FILE": -817000,
    "CAT_NO_ACCESS_PERMISSION": -818000,
    "CAT_COLLECTION_NOT_EMPTY": -821000,
    "CAT_INVALID_AUTHENTICATION": -826000,
    "CAT_INVALID_USER": -827000,
    "CAT_INVALID_ZONE": -828000,
    "CAT_NAME_EXISTS_AS_COLLECTION": -833000,
    "CAT_NAME_EXISTS_AS_DATAOBJ": -834000,
}

MAX_PATH_ALLOWED = 1024  # bytes in a logical path (rodsDef.h)
MAX_SQL_ROWS = 256  # rows in one GenQuery reply (rodsGenQuery.h)
MAX_PASSWORD_LEN = 50  # native authentication pads the password to this length


class IrodsError(Exception):
    """An API call failed with an iRODS error code; ``str`` is the message sent back."""

    def __init__(self, name: str, message: str = ""):
        super().__init__(message or name)
        self.name = name
        self.code = ERRORS[name]


class ProtocolError(Exception):
    """The peer sent something that is not the iRODS protocol; the connection is closed."""


@dataclass
class Packet:
    type: str
    msg: bytes
    error: bytes
    bs: bytes
    int_info: int


# --- framing ----------------------------------------------------------------------------------

def _read_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n > 0:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise ConnectionError("peer closed the connection")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


_HEADER_MAX = 1 << 16
_BODY_MAX = 1 << 30


def read_packet(sock: socket.socket) -> Packet:
    (hlen,) = struct.unpack(">i", _read_exact(sock, 4))
    if not 0 < hlen <= _HEADER_MAX:
        raise ProtocolError(f"bad header length {hlen}")
    try:
        header = ET.fromstring(_read_exact(sock, hlen))
    except ET.ParseError as exc:
        raise ProtocolError(f"unreadable header: {exc}") from None
    if header.tag != "MsgHeader_PI":
        raise ProtocolError(f"expected MsgHeader_PI, got {header.tag}")
    try:
        lengths = [int(field(header, name) or 0) for name in ("msgLen", "errorLen", "bsLen")]
        int_info = int(field(header, "intInfo") or 0)
    except ValueError:
        raise ProtocolError("non-numeric header field") from None
    if any(not 0 <= n <= _BODY_MAX for n in lengths):
        raise ProtocolError("bad body length")
    msg, error, bs = (_read_exact(sock, n) if n else b"" for n in lengths)
    return Packet(field(header, "type"), msg, error, bs, int_info)


def header_bytes(type_: str, msg_len: int, err_len: int, bs_len: int, int_info: int) -> bytes:
    header = (
        f"<MsgHeader_PI>\n<type>{type_}</type>\n<msgLen>{msg_len}</msgLen>\n"
        f"<errorLen>{err_len}</errorLen>\n<bsLen>{bs_len}</bsLen>\n"
        f"<intInfo>{int_info}</intInfo>\n</MsgHeader_PI>\n"
    ).encode()
    return struct.pack(">i", len(header)) + header


def write_packet(sock: socket.socket, type_: str, msg: bytes = b"", error: bytes = b"",
                 bs: bytes = b"", int_info: int = 0) -> None:
    sock.sendall(header_bytes(type_, len(msg), len(error), len(bs), int_info) + msg + error + bs)


# --- XML packing ------------------------------------------------------------------------------

_ENTITIES = [("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;"), ("'", "&apos;")]


def escape(text: str) -> str:
    for raw, entity in _ENTITIES:
        text = text.replace(raw, entity)
    return text


class Bin(bytes):
    """A value packed as a ``bin`` field (base64)."""


def pack(tag: str, fields: list[tuple[str, object]]) -> str:
    """Pack one structure. Values: str/int (text), Bin (base64), list (a repeated field, each item
    packed under the same name), a ``(tag, fields)`` tuple (a nested structure, packed under its own
    tag), or None (a NULL pointer: omitted)."""
    out = [f"<{tag}>"]
    for name, value in fields:
        out.append(_pack_value(name, value))
    out.append(f"</{tag}>\n")
    return "".join(out)


def _pack_value(name: str, value) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple):
        return pack(*value)
    if isinstance(value, list):
        return "".join(_pack_value(name, item) for item in value)
    if isinstance(value, Bin):
        return f"<{name}>{base64.b64encode(value).decode()}</{name}>\n"
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    return f"<{name}>{escape(str(value))}</{name}>\n"


def parse(msg: bytes, expected_tag: str | None = None) -> ET.Element:
    try:
        root = ET.fromstring(msg)
    except (ET.ParseError, ValueError) as exc:
        raise IrodsError("SYS_API_INPUT_ERR", f"request body is not a packed structure: {exc}") from None
    if expected_tag and root.tag != expected_tag:
        raise IrodsError("SYS_API_INPUT_ERR", f"expected {expected_tag}, got {root.tag}")
    return root


def field(el: ET.Element, name: str, default: str = "") -> str:
    child = el.find(name)
    if child is None or child.text is None:
        return default
    return child.text


def int_field(el: ET.Element, name: str, default: int = 0) -> int:
    text = field(el, name)
    if not text.strip():
        return default
    try:
        return int(float(text)) if "." in text or "e" in text.lower() else int(text)
    except ValueError:
        raise IrodsError("SYS_API_INPUT_ERR", f"{name} is not a number: {text!r}") from None


def key_values(el: ET.Element | None) -> dict[str, str]:
    """Unpack a KeyValPair_PI (``ssLen``, then ``keyWord``/``svalue`` arrays)."""
    if el is None:
        return {}
    keys = [k.text or "" for k in el.findall("keyWord")]
    values = [v.text or "" for v in el.findall("svalue")]
    return dict(zip(keys, values))


def error_stack(status: int, message: str) -> bytes:
    return pack("RError_PI", [("count", 1), ("RErrMsg_PI", ("RErrMsg_PI", [("status", status), ("msg", message)]))]).encode()


def json_buf(obj) -> bytes:
    """A BinBytesBuf_PI carrying JSON (how APIs with JSON output answer, iRODS 4.2.9 and later)."""
    payload = json.dumps(obj).encode()
    return pack("BinBytesBuf_PI", [("buflen", len(payload)), ("buf", Bin(payload))]).encode()


def read_json_buf(msg: bytes) -> dict:
    root = parse(msg)
    if root.tag == "BinBytesBuf_PI":
        raw = base64.b64decode(field(root, "buf"))
    elif root.tag == "BytesBuf_PI":
        raw = field(root, "buf").encode()
    else:
        raise IrodsError("SYS_API_INPUT_ERR", f"expected BinBytesBuf_PI, got {root.tag}")
    try:
        return json.loads(raw.replace(b"\0", b"").decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise IrodsError("SYS_API_INPUT_ERR", "request buffer is not JSON") from None
