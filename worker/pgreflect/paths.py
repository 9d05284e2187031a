"""Where pgreflect keeps its files. Every location has an environment-variable override."""

from __future__ import annotations

import os
from pathlib import Path

# The package runs from the checkout (editable install), so the SQL lives two levels up.
ROOT = Path(__file__).resolve().parents[2]


def db_dir() -> Path:
    return Path(os.environ.get("PGREFLECT_DB_DIR", ROOT / "db"))


def home() -> Path:
    """Project-owned state: cluster, keyring, assembled models, logs. Default: <checkout>/.pgreflect."""
    return Path(os.environ.get("PGREFLECT_HOME", ROOT / ".pgreflect")).resolve()


def models_dir() -> Path:
    return Path(os.environ.get("PGREFLECT_MODELS_DIR", home() / "models"))


def keyring_path() -> Path:
    return Path(os.environ.get("PGREFLECT_KEYRING", home() / "keyring.json"))


def logs_dir() -> Path:
    return home() / "logs"


def improve_dir() -> Path:
    """Training twins (per base GGUF sha256), job work folders and adapters (content-addressed)."""
    return Path(os.environ.get("PGREFLECT_IMPROVE_DIR", home() / "improve"))


def datasets_dir() -> Path:
    """Datasets fetched on demand (not installed: BIG-bench's package is a 358 MB sdist of which a few task
    files are used)."""
    return Path(os.environ.get("PGREFLECT_DATASETS_DIR", Path.home() / ".cache" / "pgreflect" / "datasets"))


def converter_dir() -> Path:
    """llama.cpp's LoRA converter, taken from the llama-cpp-python source distribution by scripts/install.sh."""
    if os.environ.get("PGREFLECT_LLAMA_CPP_CONVERTER"):
        return Path(os.environ["PGREFLECT_LLAMA_CPP_CONVERTER"])
    import sys

    import llama_cpp

    return Path(sys.prefix) / "share" / "pgreflect" / f"llama.cpp-{llama_cpp.__version__}"
