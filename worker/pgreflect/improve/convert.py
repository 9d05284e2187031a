"""A peft adapter to a GGUF LoRA with llama.cpp's own converter (convert_lora_to_gguf.py from the
llama-cpp-python source distribution; scripts/install.sh puts it in the venv). Never contacts a model hub:
--base names the twin's folder (its config.json is all the converter needs) and HF_HUB_OFFLINE is set."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from pgreflect.models import sha256_file
from pgreflect.paths import converter_dir, improve_dir


class ConversionError(RuntimeError):
    pass


def convert(adapter_dir: Path, twin: Path, timeout_s: float = 1800) -> tuple[Path, str]:
    """Returns the GGUF adapter's content-addressed path (improve/adapters/<sha256>.gguf) and its sha256."""
    script = converter_dir() / "convert_lora_to_gguf.py"
    if not script.exists():
        raise ConversionError(f"llama.cpp's converter is missing ({script}): run scripts/install.sh")
    out_dir = improve_dir() / "adapters"
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".converting-{os.getpid()}-{adapter_dir.parent.name}.gguf"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # f32: the adapters are small (rank 8) and llama.cpp applies them to any base type.
    proc = subprocess.run([sys.executable, str(script), "--base", str(twin), "--outtype", "f32", "--outfile", str(tmp),
                           str(adapter_dir)], env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        raise ConversionError(f"convert_lora_to_gguf.py failed ({proc.returncode}): {proc.stderr[-800:]}")
    digest = sha256_file(tmp)
    final = out_dir / f"{digest}.gguf"
    if final.exists():
        tmp.unlink()
    else:
        shutil.move(str(tmp), final)
    return final, digest
