"""Pretrained Hugging Face models as a model source: where their files are, what role each plays, and
loading them (`transformers`, the optional group `.[hf]`). Which models an experiment names, and
their settings, is pipeline.config.pretrained's.

`name` is a hub name looked up in the local Hugging Face cache (`HF_HOME`, `HF_HUB_CACHE`) or a local
folder holding config.json, the weights and the tokenizer files. Offline first: nothing is downloaded
unless `pretrained.download: true` (and `HF_HUB_OFFLINE` is unset); a model missing from the cache
stops with `ModelNotAvailable`, which names the model and the command that fetches it. Roles:

- `mlm`: an encoder with a masked-LM head (BERT, RoBERTa); the analysed stack is its base encoder;
- `lm`: a decoder-only causal LM (GPT-2, Pythia); the analysed stack is its base decoder;
- `mt`: an encoder-decoder (Marian, T5, BART); the analysed stack is its encoder.

Nothing here imports torch or transformers at import time: the workflow reads roles while it parses.
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.config.pretrained import HFSpec, _setting
from pipeline.errors import PipelineError
from pipeline.records.files import sha256_file

# model_type of config.json -> role, for configs whose `architectures` say nothing usable
_TYPE_ROLE = {**dict.fromkeys(("bert", "roberta", "xlm-roberta", "distilbert", "electra", "deberta",
                               "deberta-v2", "camembert", "albert", "modernbert"), "mlm"),
              **dict.fromkeys(("gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "opt", "qwen2",
                               "pythia", "bloom", "phi", "gemma"), "lm"),
              **dict.fromkeys(("marian", "t5", "mt5", "bart", "mbart", "pegasus", "m2m_100", "fsmt"), "mt")}


class ModelNotAvailable(PipelineError):
    """A named model is neither a local folder nor in the local Hugging Face cache."""


# ---------------------------------------------------------------- finding the files

def _download_allowed(cfg: DictConfig | None) -> bool:
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return bool(cfg is not None and OmegaConf.select(cfg, "pretrained.download", default=False)) and not offline


def resolve(spec: HFSpec, cfg: DictConfig | None = None) -> Path:
    """The local folder of `spec`: the folder itself, or its snapshot in the Hugging Face cache.
    Downloads only when `pretrained.download` is true and HF_HUB_OFFLINE is not set."""
    return fetch(spec, cfg)[0]


def _download(spec: HFSpec) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(spec.name, revision=spec.revision))


def fetch(spec: HFSpec, cfg: DictConfig | None = None) -> tuple[Path, bool]:
    """(the local folder of `spec`, whether this call downloaded it into the cache): `resolve`."""
    if spec.is_folder:
        folder = Path(spec.name).expanduser().resolve()
        if not (folder / "config.json").is_file():
            raise PipelineError(f"{folder} (setting {_setting(spec.label, 'name')}) holds no config.json: "
                                "save the model there with save_pretrained(), or name a hub model")
        return folder, False
    if spec.name.startswith(("/", "./", "../", "~")):
        raise ModelNotAvailable(f"{spec.name} (setting {_setting(spec.label, 'name')}) is no folder")
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        return Path(snapshot_download(spec.name, revision=spec.revision, local_files_only=True)), False
    except Exception as cached_error:  # LocalEntryNotFoundError, a bad repo id, ...
        if _download_allowed(cfg):
            try:
                return _download(spec), True
            except Exception as e:
                raise ModelNotAvailable(f"{spec.name} could not be downloaded ({type(e).__name__}: {e}); fetch "
                                        f"it with `{spec.fetch_command()}`") from None
        revision = f" at revision {spec.revision}" if spec.revision else ""
        raise ModelNotAvailable(
            f"model {spec.name}{revision} (setting {_setting(spec.label, 'name')}) is not in the local Hugging "
            f"Face cache ({HF_HUB_CACHE}): fetch it once with `{spec.fetch_command()}` "
            f"(pip install -e '.[hf]' provides the hf command), or name a local folder "
            f"[{type(cached_error).__name__}]") from None


def evict(spec: HFSpec, folder: Path) -> int:
    """Remove the cache snapshot `folder` of `spec` (its commit) and the files no other revision of the
    cache shares; returns the bytes freed (huggingface_hub's cache scan decides what is shared)."""
    from huggingface_hub import scan_cache_dir

    cache = folder.parents[2]  # <cache>/models--org--name/snapshots/<commit>
    info = scan_cache_dir(cache)
    strategy = info.delete_revisions(folder.name)
    strategy.execute()
    return int(strategy.expected_freed_size)


def read_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PipelineError(f"{folder / 'config.json'} is not a readable model config ({e})") from None


def infer_role(config: dict) -> str | None:
    """The role a config.json says its model plays, or None when it does not say."""
    architectures = [str(a) for a in config.get("architectures") or []]
    if config.get("is_encoder_decoder"):
        return "mt"
    for arch in architectures:
        if arch.endswith("ForMaskedLM"):
            return "mlm"
        if arch.endswith(("ForCausalLM", "LMHeadModel")):
            return "lm"
        if arch.endswith(("ForConditionalGeneration", "MTModel", "ForSeq2SeqLM")):
            return "mt"
    return _TYPE_ROLE.get(str(config.get("model_type", "")))


def choose_role(spec: HFSpec, config: dict) -> str:
    """The stated role, else the inferred one; a stated role its config contradicts is kept (the
    user knows their model) but an unknown one is an error naming the setting."""
    if spec.role is not None:
        return spec.role
    role = infer_role(config)
    if role is None:
        raise PipelineError(
            f"cannot tell the role of {spec.name} from its config.json (model_type "
            f"{config.get('model_type')!r}, architectures {config.get('architectures')}): set "
            f"{_setting(spec.label, 'role')} to mlm (encoder), lm (decoder-only) or mt (encoder of an encoder-decoder)")
    return role


def role_without_loading(spec: HFSpec) -> str | None:
    """The role when it is stated or readable from a local config.json without the hub (the workflow
    needs it while it parses); None when only the cache could tell."""
    if spec.role is not None:
        return spec.role
    if spec.is_folder:
        return choose_role(spec, read_config(Path(spec.name).expanduser()))
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(spec.name, "config.json", revision=spec.revision)
    except Exception:  # an invalid repo id: resolve() names it when the dump runs
        return None
    return choose_role(spec, read_config(Path(cached).parent)) if isinstance(cached, str) else None


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a saved model: safetensors where there are any, else PyTorch's."""
    safe = sorted(folder.glob("*.safetensors"))
    return safe or sorted([*folder.glob("pytorch_model*.bin"), *folder.glob("*.pt")])


def revision_of(spec: HFSpec, folder: Path) -> str:
    """What identifies the files used: the cache snapshot's commit, or 'local folder'."""
    if spec.is_folder:
        return "local folder"
    return folder.name  # a snapshot folder is named by its commit hash


def describe(spec: HFSpec, folder: Path, role: str, config: dict,
             hashes: dict[str, str | None] | None = None) -> dict[str, Any]:
    """The provenance of one pretrained model, for its dump's meta.json and the report; `hashes`
    (path -> sha256, as input_hashes gives them) spares hashing the weights again."""
    weights = weight_files(folder)
    hashes = hashes or {}
    return {"label": spec.label, "name": spec.name, "role": role, "source": str(folder),
            "revision": revision_of(spec, folder), "requested_revision": spec.revision,
            "model_type": config.get("model_type"), "architectures": config.get("architectures"),
            "weights": [{"file": w.name, "bytes": w.stat().st_size, "sha256": hashes.get(str(w)) or sha256_file(w)}
                        for w in weights],
            "safetensors": bool(weights) and weights[0].suffix == ".safetensors"}


# ---------------------------------------------------------------- loading

def torch_dtype(spec: HFSpec, config: dict):
    import torch

    name = spec.dtype or str(config.get("torch_dtype") or config.get("dtype") or "float32")
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(name, torch.float32)


def load(spec: HFSpec, folder: Path, role: str, device, dtype):
    """(the whole model in eval mode on `device`, the analysed stack, the tokenizer)."""
    try:
        import transformers
    except ImportError:
        raise PipelineError("pretrained models need the optional dependencies: pip install -e '.[hf]'") from None
    auto = {"mlm": transformers.AutoModelForMaskedLM, "lm": transformers.AutoModelForCausalLM,
            "mt": transformers.AutoModelForSeq2SeqLM}[role]
    weights = weight_files(folder)
    try:
        model = auto.from_pretrained(str(folder), dtype=dtype, local_files_only=True,
                                     use_safetensors=bool(weights) and weights[0].suffix == ".safetensors")
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (pickle.UnpicklingError, EOFError) as e:  # torch.load of a damaged, cut short or foreign weights file
        raise PipelineError(_not_a_checkpoint(spec, weights, e)) from None
    except RuntimeError as e:
        if "PytorchStreamReader" not in str(e):  # a damaged zip of a PyTorch checkpoint; else not ours to name
            raise
        raise PipelineError(_not_a_checkpoint(spec, weights, e)) from None
    except (OSError, ValueError, KeyError) as e:
        raise PipelineError(f"{spec.name} ({folder}) does not load as a {role} model "
                            f"({type(e).__name__}: {e}); check {_setting(spec.label, 'role')}") from None
    model = model.to(device).eval()
    return model, analysed_stack(model, role), tokenizer


def _not_a_checkpoint(spec: HFSpec, weights: list[Path], error: BaseException) -> str:
    """One line naming the weight file(s) that do not load, and what to do."""
    files = ", ".join(str(w) for w in weights) or "its weights"
    again = ("replace it with the model's own weights" if spec.is_folder
             else f"fetch the model again: {spec.fetch_command()} --force-download")
    return (f"{files} is not a loadable checkpoint ({type(error).__name__}: it does not unpickle: damaged, cut "
            f"short or not a PyTorch file): {again}")


def analysed_stack(model, role: str):
    """The module whose hidden states are dumped: the encoder for mt, the base model otherwise."""
    if role == "mt":
        return model.get_encoder()
    return model.base_model


def max_input_length(model, tokenizer) -> int:
    """The longest input (special tokens included) the model takes: its position table, capped by the
    tokenizer's model_max_length when that is set."""
    config = model.config
    limits = [getattr(config, key, None) for key in ("max_position_embeddings", "n_positions", "n_ctx")]
    limits = [int(v) for v in limits if isinstance(v, int) and v > 0]
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < 1_000_000:
        limits.append(tok_limit)
    return min(limits) if limits else 512
