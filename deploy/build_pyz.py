"""Build dist/relayproxy.pyz: relayproxy and its runtime dependencies in one zipapp (stdlib zipapp).

Run with the interpreter of the environment the tests ran in (``make dist`` uses .venv/bin/python):
its installed versions pin the bundled ones, so the file carries what was tested. The compiled
dependencies (orjson, uvloop) are bundled for several CPython versions (each build's extension
file has its own name, so they sit side by side); the archive runs on those versions on this
machine's architecture. Needs the package index (pip) unless pip's cache has everything.

    python deploy/build_pyz.py [--out dist/relayproxy.pyz] [--extra-pythons 3.12 3.13 3.14]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipapp
import zipfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXTRA_PYTHONS = ("3.12", "3.13", "3.14")
COMPILED = ("orjson", "uvloop")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / "relayproxy.pyz")
    parser.add_argument("--extra-pythons", nargs="*", default=list(EXTRA_PYTHONS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="relayproxy-pyz-") as tmp:
        stage = Path(tmp) / "stage"
        lib = stage / "_lib"
        _install_dependencies(lib, Path(tmp))
        for package in COMPILED:
            _add_builds(package, lib, Path(tmp) / "wheels", args.extra_pythons)
        _strip_debug_info(lib)
        shutil.copytree(ROOT / "relayproxy", lib / "relayproxy", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "deploy" / "pyz_main.py", stage / "__main__.py")
        _write_build_info(stage)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        zipapp.create_archive(stage, args.out, interpreter="/usr/bin/env python3", compressed=True)
    size_mb = args.out.stat().st_size / 1e6
    print(f"built {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out} ({size_mb:.1f} MB)")  # noqa: T201
    return 0


def _runtime_requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"])


def _pins() -> list[str]:
    """name==version of every distribution installed here: the tested versions."""
    pins = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() != "relayproxy":
            pins[name.lower()] = f"{name}=={dist.version}"
    return sorted(pins.values())


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True)


def _install_dependencies(lib: Path, tmp: Path) -> None:
    constraints = tmp / "constraints.txt"
    constraints.write_text("\n".join(_pins()) + "\n")
    _pip(
        "install",
        "--target",
        str(lib),
        "--no-compile",
        "--only-binary=:all:",
        "-c",
        str(constraints),
        *_runtime_requirements(),
    )
    for junk in lib.glob("bin"):
        shutil.rmtree(junk)


def _add_builds(package: str, lib: Path, wheels: Path, pythons: list[str]) -> None:
    """Put a compiled package's extensions for other CPython versions next to the one installed."""
    pin = next((p for p in _pins() if p.lower().startswith(f"{package}==")), None)
    if pin is None or not (lib / package).is_dir():  # not a dependency on this platform
        return
    version = pin.split("==")[1]
    arch = platform.machine()
    for py in pythons:
        nodot = py.replace(".", "")
        try:
            _pip(
                "download", f"{package}=={version}", "--no-deps", "--only-binary=:all:", "-d", str(wheels),
                "--python-version", py, "--implementation", "cp", "--abi", f"cp{nodot}",
                "--platform", f"manylinux_2_17_{arch}", "--platform", f"manylinux2014_{arch}",
            )  # fmt: skip
        except subprocess.CalledProcessError:
            print(f"note: no {package} {version} wheel for CPython {py} on {arch}; skipped", file=sys.stderr)  # noqa: T201
    extension = re.compile(rf"{package}/[^/]+\.cpython-\d+-[^/]+\.so")
    for wheel in sorted(wheels.glob(f"{package}-*.whl")):
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if extension.fullmatch(name) and not (lib / name).exists():
                    zf.extract(name, lib)


def _strip_debug_info(lib: Path) -> None:
    """Drop the extensions' debug sections (uvloop's: 13.6 of 15.5 MB per CPython version); the
    loaded code is unchanged. Skipped where binutils' ``strip`` is missing."""
    strip = shutil.which("strip")
    if strip is None:
        print("note: no strip (binutils) here; extensions bundled with their debug info", file=sys.stderr)  # noqa: T201
        return
    for extension in sorted(lib.rglob("*.so")):
        subprocess.run([strip, "--strip-debug", str(extension)], check=True)


def _write_build_info(stage: Path) -> None:
    digest = hashlib.sha256()
    for path in sorted(p for p in stage.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(stage)).encode() + b"\0" + path.read_bytes())
    from_root = ROOT / "relayproxy" / "__init__.py"
    version = re.search(r'__version__ = "([^"]+)"', from_root.read_text())
    info = {
        "id": digest.hexdigest()[:16],
        "version": version.group(1) if version else "unknown",
        "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "machine": platform.machine(),
    }
    (stage / "BUILD.json").write_text(json.dumps(info) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
