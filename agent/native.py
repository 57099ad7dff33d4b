"""Build the compiled CNI shim (cni/shim.c) once per source version, where a C compiler is.

An interpreter needs ~6 ms of CPU just to start, as much as ptp and host-local
together spend on a whole ADD; the static shim starts in a fraction of that.
Machines without a compiler keep the Python shim, which speaks the same protocol.
The binary is cached under WEFT_CACHE_DIR (default /var/cache/weft), keyed by
a hash of the source, so an image can carry it prebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

# weft.cni sits beside weft.agent both in the source tree and when installed.
SOURCE = Path(__file__).resolve().parent.parent / "cni" / "shim.c"
CFLAGS = ("-O2", "-static", "-s", "-Wall")


def cache_dir() -> Path:
    return Path(os.environ.get("WEFT_CACHE_DIR", "/var/cache/weft"))


def compiled_shim() -> Path | None:
    """The compiled shim, built now if needed; None when no C compiler can build it."""
    code = SOURCE.read_bytes()
    target = cache_dir() / f"weft-cni-{hashlib.sha256(code).hexdigest()[:16]}"
    if target.exists():
        return target
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        log.info("no C compiler: the CNI binaries use the Python shim")
        return None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, scratch = tempfile.mkstemp(dir=target.parent, prefix=".build-")
    except OSError as err:
        log.warning("cannot build the CNI shim in %s (%s): using the Python shim; set "
                    "WEFT_CACHE_DIR to a writable directory", target.parent, err.strerror)
        return None
    os.close(fd)
    try:
        built = subprocess.run([compiler, *CFLAGS, "-o", scratch, "-x", "c", "-"], input=code,
                               capture_output=True)
        if built.returncode != 0:
            log.warning("could not compile the CNI shim, using the Python shim: %s",
                        built.stderr.decode(errors="replace").strip())
            return None
        os.replace(scratch, target)  # two builders at once both write whole files
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(scratch)
    return target
