"""CNI error codes and the error object every weft plugin answers with.

The spec reserves codes below 100; weft's own start at 100. Every failure a user
can cause is raised as a `CNIError` so that it reaches the runtime as the spec's
JSON error object with a message that says what to fix, never as a traceback.
"""

from __future__ import annotations

import json

# Codes from the CNI specification.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
CONTAINER_UNKNOWN = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
NOT_AVAILABLE_LIMITED = 51

# weft's own codes.
INTERNAL = 100
POOL_EXHAUSTED = 101
NETWORK_SETUP = 102
DATASTORE = 103
CHECK_FAILED = 104


class CNIError(Exception):
    """A failure to report to the runtime: a spec code, a short msg and details."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg if not details else f"{msg}: {details}")
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> bytes:
        body = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            body["details"] = self.details
        return json.dumps(body, indent=1).encode() + b"\n"
