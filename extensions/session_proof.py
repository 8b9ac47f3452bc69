"""The proof a session's server gives the hub that it is that session.

Before the hub routes a user's URL to a reported port, it sends the server there a fresh
random challenge; the server answers with an HMAC of the challenge under the session's own
API token (``JUPYTERHUB_API_TOKEN``), which only the job and the hub know.  The answer also
binds the user, the server's name and the port the server itself listens on, so another
user's server on the node that relays the challenge to the real session (to sit in the
middle of its traffic) gets a proof for the real session's port, not for its own.

The hub never sends a credential with the challenge: what answers may not be the session.
Pure functions (no Jupyter imports): the hub and the session's server extension
(``session_identity``) both use them.
"""

from __future__ import annotations

import hashlib
import hmac
import re

PATH = "bioimage-gateway/identity"  # below the server's base URL, /user/<name>/
_DOMAIN = "bioimage-gateway session identity v1"
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{32,128}")


def valid_challenge(challenge: str) -> bool:
    return bool(_CHALLENGE.fullmatch(challenge))


def proof(token: str, *, user: str, server_name: str, port: int, challenge: str) -> str:
    """HMAC-SHA256 (hex) of the challenge and what it is about, under the session's token."""
    if not valid_challenge(challenge):
        raise ValueError("a challenge is 32 to 128 characters of A-Z, a-z, 0-9, _ and -")
    message = "\n".join((_DOMAIN, user, server_name, str(int(port)), challenge))
    return hmac.new(token.encode(), message.encode(), hashlib.sha256).hexdigest()


def matches(expected: str, answered: object) -> bool:
    return isinstance(answered, str) and hmac.compare_digest(expected.encode(), answered.encode())
