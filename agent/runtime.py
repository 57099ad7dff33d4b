"""A self-contained Python runtime for hosts without Python (a kind node has none).

The interpreter (and libpython when it is shared), the standard library without
its tests and GUI parts, weft, and exactly the distributions weft depends on,
copied into `<root>/versions/<id>`, with every shared library those load that is
not the C library's own (libexpat, libssl, libffi, libsqlite3...: a kind node has
none of them, while its glibc must be the one its dynamic linker belongs to).
`<root>/current` is a symlink swapped by an atomic rename, so a CNI binary that
starts during an upgrade runs either the old runtime or the new one, never half of one.
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import os
import re
import shutil
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

SKIP_STDLIB = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
               "pydoc_data", "site-packages", "dist-packages", "__phello__"}
WEFT_PACKAGES = ("weft", "weft.cni", "weft.ipam", "weft.agent", "weft.agent.proxy",
                 "weft.agent.policy", "weft.lab", "weft.lab.kube", "weft.lab.kind")
# glibc's libraries: the host's own, which must match its dynamic linker
HOST_LIBRARIES = ("ld-linux", "libc.so.", "libm.so.", "libmvec.so.", "libpthread.so.",
                  "libdl.so.", "librt.so.", "libutil.so.", "libresolv.so.", "libanl.so.",
                  "libnss_", "libBrokenLocale.so.")


def version_dir_name() -> str:
    return f"py{sys.version_info.major}{sys.version_info.minor}-{time.strftime('%Y%m%d%H%M%S')}"


def build(root: Path) -> Path:
    """Copy the runtime into a new version directory and make it current."""
    versions = root / "versions"
    target = versions / version_dir_name()
    staging = versions / f".{target.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _copy_interpreter(staging)
    site = _copy_stdlib(staging)
    _copy_weft(site)
    for dist in dependency_closure("weft"):
        _copy_distribution(dist, site)
    _copy_libraries(staging)
    if target.exists():
        shutil.rmtree(target)
    os.rename(staging, target)
    _point_current(root, target)
    _prune(versions, keep={target.name})
    return root / "current"


def interpreter(runtime: Path) -> Path:
    return runtime / "bin" / "python3"


def needs_libpython() -> bool:
    """Whether the interpreter binary loads libpython at run time.

    Py_ENABLE_SHARED is not enough: Debian builds the shared library but links its
    /usr/bin/python3.11 statically. The binary's dynamic string table names every
    library it needs, so look for the library's name there.
    """
    name = sysconfig.get_config_var("INSTSONAME") or ""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not name:
        return False
    return name.encode() in Path(os.path.realpath(sys.executable)).read_bytes()


def library_path(runtime: Path) -> str:
    """LD_LIBRARY_PATH the interpreter needs ('' when it loads no library of its own)."""
    return str(runtime / "lib") if any((runtime / "lib").glob("*.so*")) else ""


def site_packages_relative() -> Path:
    """Where this interpreter's site module looks for packages, relative to its prefix:
    lib/python3.11/site-packages here, lib/python3/dist-packages on Debian."""
    import site

    prefix = Path(sys.prefix)
    for candidate in site.getsitepackages():
        path = Path(candidate)
        if path.is_relative_to(prefix):
            return path.relative_to(prefix)
    raise RuntimeError("this interpreter has no site-packages directory under its prefix")


def dependency_closure(name: str) -> list[metadata.Distribution]:
    """The installed distributions `name` requires, recursively (extras left out)."""
    seen: dict[str, metadata.Distribution] = {}
    queue = [name]
    while queue:
        for requirement in metadata.distribution(queue.pop()).requires or []:
            if "extra ==" in requirement:
                continue
            dep = re.split(r"[ ;<>=!~\[(]", requirement.strip(), maxsplit=1)[0]
            key = dep.lower().replace("_", "-")
            if key in seen:
                continue
            try:
                dist = metadata.distribution(dep)
            except metadata.PackageNotFoundError:
                continue  # an optional, platform-specific requirement not installed here
            seen[key] = dist
            queue.append(dep)
    return list(seen.values())


def _copy_interpreter(target: Path) -> None:
    (target / "bin").mkdir()
    shutil.copy2(os.path.realpath(sys.executable), interpreter(target))
    if needs_libpython():
        libdir = Path(sysconfig.get_config_var("LIBDIR"))
        name = sysconfig.get_config_var("INSTSONAME")
        (target / "lib").mkdir(exist_ok=True)
        shutil.copy2(libdir / name, target / "lib" / name)


def _copy_libraries(target: Path) -> None:
    """Copy into `target/lib` what the runtime's ELF files need, transitively, except
    glibc's libraries and what their RUNPATH finds inside the runtime (a wheel's own
    libraries beside it); a RUNPATH to a directory of this machine counts for nothing
    on another host."""
    libdir = target / "lib"
    libdir.mkdir(exist_ok=True)
    pending = list(elf_files(target))
    seen = {p.name for p in libdir.glob("*.so*")}
    while pending:
        for name, runpath in needed_libraries(pending.pop()):
            if name in seen or name.startswith(HOST_LIBRARIES) or any(
                    (Path(d) / name).exists() and Path(os.path.realpath(d)).is_relative_to(
                        os.path.realpath(target)) for d in runpath):
                continue
            source = system_library(name)
            if source is None:
                raise RuntimeError(f"cannot find {name}, which the Python runtime needs; "
                                   "install the package that has it")
            shutil.copy2(source, libdir / name)
            seen.add(name)
            pending.append(libdir / name)


def elf_files(root: Path) -> Iterator[Path]:
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and (
                path.suffix == ".so" or ".so." in path.name or path.parent.name == "bin"):
            with path.open("rb") as file:
                if file.read(4) == b"\x7fELF":
                    yield path


def needed_libraries(path: Path) -> Iterator[tuple[str, list[str]]]:
    """The libraries an ELF file names (DT_NEEDED), with where it says to look first."""
    with path.open("rb") as file:
        dynamic = next((s for s in ELFFile(file).iter_sections()
                        if isinstance(s, DynamicSection)), None)
        if dynamic is None:
            return
        tags = list(dynamic.iter_tags())
    runpath = [d.replace("$ORIGIN", str(path.parent)).replace("${ORIGIN}", str(path.parent))
               for t in tags if t.entry.d_tag in ("DT_RUNPATH", "DT_RPATH")
               for d in (getattr(t, "runpath", None) or getattr(t, "rpath", "")).split(":")
               if d]
    for tag in tags:
        if tag.entry.d_tag == "DT_NEEDED":
            yield tag.needed, runpath


def system_library(name: str) -> Path | None:
    """Where the dynamic linker would find `name` on this machine."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    for directory in (sysconfig.get_config_var("LIBDIR") or "", f"/lib/{multiarch}",
                      f"/usr/lib/{multiarch}", "/lib64", "/usr/lib64", "/lib", "/usr/lib",
                      "/usr/local/lib"):
        candidate = Path(directory) / name
        if directory and candidate.is_file():
            return Path(os.path.realpath(candidate))
    return None


def _copy_stdlib(target: Path) -> Path:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    dest = target / "lib" / stdlib.name
    shutil.copytree(stdlib, dest, symlinks=False, ignore=lambda d, names: [
        n for n in names if (Path(d) == stdlib and (n in SKIP_STDLIB or
                                                    n.startswith("config-")))
        or n.startswith("_tkinter")])  # the GUI's extension module: Tk and X11
    site = target / site_packages_relative()
    site.mkdir(parents=True, exist_ok=True)
    return site


def _copy_weft(site: Path) -> None:
    """weft's packages from where they are imported (an editable install included)."""
    for package in WEFT_PACKAGES:
        source = Path(next(iter(importlib.util.find_spec(package).submodule_search_locations)))
        dest = site.joinpath(*package.split("."))
        dest.mkdir(parents=True, exist_ok=True)
        for path in source.glob("*.py"):
            shutil.copy2(path, dest / path.name)


def _copy_distribution(dist: metadata.Distribution, site: Path) -> None:
    base = Path(dist.locate_file("")).resolve()
    for file in dist.files or []:
        source = Path(dist.locate_file(file)).resolve()
        try:
            relative = source.relative_to(base)
        except ValueError:
            continue  # a script installed outside site-packages
        if relative.parts[0] in ("..", "bin") or not source.is_file():
            continue
        dest = site / relative
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest)


def _point_current(root: Path, target: Path) -> None:
    link = root / ".current.new"
    link.unlink(missing_ok=True)
    os.symlink(Path("versions") / target.name, link)
    os.replace(link, root / "current")


def _prune(versions: Path, keep: set[str]) -> None:
    """Keep the current runtime and the newest older one (a pod may still run it)."""
    old = sorted((p for p in versions.iterdir() if p.name not in keep
                  and not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)
    for path in old[:-1]:
        shutil.rmtree(path, ignore_errors=True)
