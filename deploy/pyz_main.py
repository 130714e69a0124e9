"""relayproxy single-file build (a zipapp): unpack the bundled libraries once, then run the CLI.

Python cannot import compiled extension modules (orjson's) from inside a zip file, and some
libraries read data files next to their code (certifi's CA bundle, used by stripe), so the
libraries under ``_lib/`` are unpacked once per build into a cache directory, the way shiv does:

- ``$RELAYPROXY_CACHE_DIR``, else ``$CACHE_DIRECTORY`` (systemd's ``CacheDirectory=``), else
  ``$XDG_CACHE_HOME/relayproxy``, else ``~/.cache/relayproxy``;
- into ``site-<build id>``, written under a temporary name and renamed when complete, so
  processes starting together never see a half-unpacked tree; an older build's directory is
  left alone (a running service may still start workers from it).

Standard library only: this runs before any bundled library is importable.
"""

import json
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

LIB = "_lib/"
MARKER = ".complete"


def _cache_root() -> Path:
    explicit = os.environ.get("RELAYPROXY_CACHE_DIR") or os.environ.get("CACHE_DIRECTORY", "").split(":")[0]
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "relayproxy"


def _unpack(archive: str) -> Path:
    with zipfile.ZipFile(archive) as zf:
        build = json.loads(zf.read("BUILD.json"))
        root = _cache_root()
        target = root / f"site-{build['id']}"
        if (target / MARKER).exists():
            return target
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=root))
        try:
            for info in zf.infolist():
                if info.filename.startswith(LIB) and not info.is_dir():
                    zf.extract(info, staging)  # zipfile drops absolute paths and ".." parts
            (staging / LIB / MARKER).touch()
            try:
                os.rename(staging / LIB, target)
            except OSError:
                if not (target / MARKER).exists():  # not simply another process winning the race
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def main() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this file runs first, on whatever python3 is
        sys.exit(f"relayproxy needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    archive = os.path.dirname(os.path.abspath(__file__))
    try:
        site = _unpack(archive)
    except OSError as exc:
        sys.exit(
            f"relayproxy: cannot unpack the bundled libraries into {_cache_root()} ({exc}); set RELAYPROXY_CACHE_DIR"
        )
    sys.path.insert(0, str(site))
    try:
        import orjson  # noqa: F401 - the one compiled dependency: fail here with a clear message
    except ImportError:
        sys.exit(
            f"relayproxy: this build carries no orjson for Python {sys.version_info[0]}.{sys.version_info[1]} "
            f"on this machine ({sys.platform}); rebuild it here with `make dist`"
        )
    from relayproxy.cli import main as cli_main

    raise SystemExit(cli_main())


if __name__ == "__main__":
    main()
