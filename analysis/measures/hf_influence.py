"""Amount of influence for Hugging Face models: one key hidden at one layer of a `transformers` stack.

The same measurement as `analysis.influence` (METHODS.md §6), for models we did not train. For an
influencing token j and a layer n (1-based: hidden_states index n is the output of block n, index 0
the input of block 1): blocks 1..n-1 run as usual; at block n only, key j is hidden from every query
except j itself (j's own row is never read, it keeps every key); the layer-n states of the other
tokens, with and without the removal, form the pairs. `removed_hidden_states` computes the states
with the removal, for many removals in one batch (one row per removal).

"Stack" is the module whose `output_hidden_states` are the analysed states:

- mlm: the base encoder of an AutoModelForMaskedLM (`model.base_model`: BertModel, RobertaModel)
- lm: the base of an AutoModelForCausalLM (`model.base_model`: GPT2Model, GPTNeoXModel), causal
- mt: the encoder of an AutoModelForSeq2SeqLM (`model.get_encoder()`: MarianEncoder, BartEncoder,
  T5Stack)

How: transformers (v5) builds one 4D attention mask per forward and hands it to every block, as an
additive float mask (eager), a boolean mask (sdpa), or None (sdpa without padding, and eager for a
bidirectional stack without padding). A forward pre-hook on block n replaces the mask that block
receives by one with the removal (built from the padding mask, and causal where the block's
attention is causal, when the model passed None); a forward hook on block n keeps its output and,
below the last block, stops the forward, so that blocks above n are never computed. The model's
own code computes everything else (embeddings, position biases, rotary embeddings, layer norms),
so nothing of any architecture is re-implemented here. `removal_support` says whether that works
for a stack, checking it on a four-token input.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn

__all__ = ["removal_support", "stack_blocks", "removed_hidden_states", "removal_attention_mask", "block_is_causal"]

# attention implementations whose per-layer mask is a plain 4D tensor (or None) that can be edited
EDITABLE_ATTENTION = ("eager", "sdpa")

# where the list of blocks lives when the stack declares no recorder for its hidden states
BLOCK_PATHS = ("encoder.layer", "layer", "layers", "h", "block", "blocks", "transformer.h", "encoder.layers")


class _StopForward(Exception):
    """Raised by the forward hook on block n to leave the stack's forward once block n has run."""


# ---------------------------------------------------------------- finding the blocks

def _hidden_state_recorders(stack: nn.Module) -> list:
    """The stack class's recorders of `hidden_states` (transformers v5 `_can_record_outputs`): the
    module classes whose outputs `output_hidden_states` returns, as a list (empty when none)."""
    specs = (getattr(type(stack), "_can_record_outputs", None) or {}).get("hidden_states")
    if specs is None:
        return []
    return list(specs) if isinstance(specs, (list, tuple)) else [specs]


def _recorder_matches(spec, module: nn.Module, name: str) -> bool:
    """Whether a recorder (a class, a class-name suffix, or an OutputRecorder) selects `module` at
    dotted path `name` (with a leading dot), as transformers' own hook installation decides it."""
    if isinstance(spec, type):
        return isinstance(module, spec)
    if isinstance(spec, str):
        return name.endswith(spec)
    target = getattr(spec, "target_class", None)
    class_name = getattr(spec, "class_name", None)
    hit = (target is not None and isinstance(module, target)) or (class_name is not None and name.endswith(class_name))
    layer_name = getattr(spec, "layer_name", None)
    if hit and layer_name is not None:
        hit = "." + layer_name.strip(".") + "." in name + "."
    return hit


def _recorded_index(stack: nn.Module) -> int:
    """Which element of a block's tuple output is its hidden state (the recorder's index; 0 if none)."""
    for spec in _hidden_state_recorders(stack):
        index = getattr(spec, "index", None)
        if index is not None:
            return int(index)
    return 0


def _walk(module: nn.Module, prefix: str, root: nn.Module):
    """(dotted name, module) of every descendant in registration order, not entering a nested
    transformers model (PreTrainedModel): its layers record hidden states of their own."""
    for name, child in module.named_children():
        path = f"{prefix}.{name}"
        yield path, child
        if not _is_pretrained(child):
            yield from _walk(child, path, root)


def _is_pretrained(module: nn.Module) -> bool:
    """Whether module is a transformers PreTrainedModel (judged by its classes' names, so that this
    file imports without transformers)."""
    return any(cls.__name__ == "PreTrainedModel" for cls in type(module).__mro__)


def stack_blocks(stack: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a stack in order: block i (0-based) produces hidden_states[i + 1].

    Found from what the stack records as its hidden states (the classes transformers hooks for
    `output_hidden_states`: BertLayer, GPT2Block, MarianEncoderLayer, T5Block, GPTNeoXLayer, ...), so
    the blocks are by construction the modules whose outputs are the analysed states; failing that,
    the first ModuleList at a usual place (`encoder.layer` for BERT, `h` for GPT-2, `layers` for
    Marian/BART/GPT-NeoX, `block` for T5). An empty list when neither is found."""
    if not isinstance(stack, nn.Module):
        return []
    recorders = _hidden_state_recorders(stack)
    if recorders:
        found = [m for name, m in _walk(stack, "", stack) if any(_recorder_matches(s, m, name) for s in recorders)]
        if found:
            return found
    for path in BLOCK_PATHS:
        module = stack
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return list(module)
    return []


def block_is_causal(block: nn.Module, config=None) -> bool:
    """Whether a block's self-attention is causal: any attention module inside it says so with the
    `is_causal` attribute (the flag transformers' sdpa path itself reads when it gets no mask;
    cross-attention modules say False); without any such attribute, `config.is_decoder`."""
    flags = [m.is_causal for m in block.modules() if isinstance(getattr(m, "is_causal", None), bool)]
    if flags:
        return any(flags)
    return bool(getattr(config, "is_decoder", False))


def _mask_parameter(block: nn.Module) -> tuple[int | None, bool]:
    """(position of the `attention_mask` parameter among block.forward's positional parameters, or
    None if it can only be given by keyword; whether the parameter exists at all)."""
    try:
        params = list(inspect.signature(block.forward).parameters.values())
    except (TypeError, ValueError):
        return None, False
    position = 0
    for p in params:
        if p.kind == p.VAR_POSITIONAL:
            break
        if p.name == "attention_mask":
            return (position if p.kind == p.POSITIONAL_OR_KEYWORD else None), True
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            position += 1
    return None, any(p.name == "attention_mask" for p in params)


# ---------------------------------------------------------------- the mask with one key hidden

def removal_attention_mask(mask: torch.Tensor | None, attention_mask: torch.Tensor, removed: torch.Tensor,
                           causal: bool, dtype: torch.dtype) -> torch.Tensor:
    """The 4D mask a block gets, with key removed[r] hidden in row r from every query but itself.

    mask: what the model built and passes to the block: a bool tensor (True = may attend), an
    additive float tensor (0 = may attend, very negative = may not), either of shape (R or 1, 1 or
    heads, T or 1, T); or None (no masking needed: full attention, or causal when `causal`).
    attention_mask (R, T): the padding mask (1 = token, 0 = padding); removed (R,) long.
    Returns a tensor of the same kind as mask (a float one of `dtype` when mask is None, which eager
    and sdpa attention both accept), broadcast to (R, ., T, T). The removed key stays visible to its
    own query and to padding queries: those rows are never read, and a padding query that could see
    only the removed token would otherwise get a fully masked row (NaN under sdpa). Padding keys
    stay masked."""
    R, T = attention_mask.shape
    device = attention_mask.device
    ar = torch.arange(T, device=device)
    real = attention_mask.to(torch.bool)
    is_key = ar[None, :] == removed[:, None]                                  # (R, T) the removed key
    readers = (ar[None, :] != removed[:, None]) & real                        # (R, T) queries that lose it
    drop = readers[:, None, :, None] & is_key[:, None, None, :]               # (R, 1, T, T)
    if mask is None:
        allowed = real[:, None, None, :].expand(R, 1, T, T)
        if causal:
            allowed = allowed & (ar[:, None] >= ar[None, :])
        allowed = allowed & ~drop
        zero = torch.zeros((), dtype=dtype, device=device)
        return torch.where(allowed, zero, torch.finfo(dtype).min)
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
        raise TypeError(f"expected a 4D attention mask tensor or None, got {type(mask).__name__}"
                        + (f" of shape {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else ""))
    if mask.shape[-1] != T:
        raise ValueError(f"the block's attention mask has {mask.shape[-1]} keys for {T} tokens (a cache?)")
    drop = drop.to(mask.device)
    if mask.dtype == torch.bool:
        return mask & ~drop
    return torch.where(drop, torch.finfo(mask.dtype).min, mask)


# ---------------------------------------------------------------- running a stack with a removal

def _stack_kwargs(stack: nn.Module) -> dict:
    """Extra keywords for the stack's forward: no cache (an encoder-only pass needs none, and a
    causal stack would otherwise build one)."""
    try:
        params = inspect.signature(stack.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"use_cache": False} if "use_cache" in params else {}


def _run(stack: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, layer: int,
         removed: torch.Tensor | None) -> torch.Tensor:
    """hidden_states[layer] of the stack, with key removed[r] hidden at block `layer` in row r
    (removed None: no change, the plain states). Hooks are removed however the forward ends."""
    blocks = stack_blocks(stack)
    block = blocks[layer - 1]
    last = layer == len(blocks)
    position, _ = _mask_parameter(block)
    causal = block_is_causal(block, getattr(stack, "config", None))
    index = _recorded_index(stack)
    kept: dict[str, torch.Tensor] = {}

    def edit_mask(module, args, kwargs):
        """Forward pre-hook: hand block `layer` the mask with the removal."""
        if removed is None:
            return None
        hidden = args[0] if args else kwargs.get("hidden_states")
        in_args = position is not None and len(args) > position
        mask = args[position] if in_args else kwargs.get("attention_mask")
        new = removal_attention_mask(mask, attention_mask, removed, causal, hidden.dtype)
        if in_args:
            args = args[:position] + (new,) + args[position + 1:]
        else:
            kwargs = {**kwargs, "attention_mask": new}
        return args, kwargs

    def keep_output(module, args, output):
        """Forward hook: keep block `layer`'s hidden state; stop the forward below the last block."""
        kept["state"] = output[index] if isinstance(output, (tuple, list)) else output
        if not last:
            raise _StopForward

    handles = [block.register_forward_pre_hook(edit_mask, with_kwargs=True), block.register_forward_hook(keep_output)]
    try:
        outputs = stack(input_ids=input_ids, attention_mask=attention_mask, **_stack_kwargs(stack))
    except _StopForward:
        return kept["state"]
    finally:
        for handle in handles:
            handle.remove()
    # the last block: output_hidden_states returns the stack's last_hidden_state there (after a final
    # layer norm, e.g. GPT-2's ln_f, GPT-NeoX's final_layer_norm, T5's final_layer_norm), unless the
    # config unties it
    if getattr(getattr(stack, "config", None), "tie_last_hidden_states", None) is False:
        return kept["state"]
    return outputs[0] if isinstance(outputs, (tuple, list)) else outputs.last_hidden_state


@torch.no_grad()
def removed_hidden_states(stack: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                          layer: int, removed: torch.Tensor) -> torch.Tensor:
    """hidden_states[layer] of a Hugging Face stack with one key hidden at block `layer`, one removal per row.

    stack: the module whose hidden states are analysed (see the module docstring), in eval mode;
    input_ids, attention_mask (R, T): one row per removal (callers replicate a sentence once per
    influencing token; attention_mask None = no padding); layer: 1..L (L = len(stack_blocks(stack)));
    removed (R,) long: the key position hidden in row r.
    Returns (R, T, d): row r is what `stack(input_ids, attention_mask, output_hidden_states=True)
    .hidden_states[layer][r]` would be if, at block `layer` only, key removed[r] were hidden from every
    query but itself (blocks below run as usual, blocks above are not computed; at layer L the
    stack's final norm, if any, is applied as output_hidden_states does). Padding keys stay masked.
    Values at padding positions are the model's usual (meaningless) ones; removing a padding position
    changes nothing. Works with attn_implementation eager and sdpa (not flash/flex: removal_support)."""
    if getattr(stack, "training", False):
        raise ValueError("removed_hidden_states: put the model in eval mode (dropout would make the pairs random)")
    blocks = stack_blocks(stack)
    if not blocks:
        raise ValueError(f"removed_hidden_states: no transformer blocks found in {type(stack).__name__}")
    if not 1 <= layer <= len(blocks):
        raise ValueError(f"removed_hidden_states: layer {layer} outside 1..{len(blocks)}")
    if input_ids.dim() != 2:
        raise ValueError(f"removed_hidden_states: input_ids must be (R, T), got shape {tuple(input_ids.shape)}")
    R, T = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if tuple(attention_mask.shape) != (R, T):
        raise ValueError(f"removed_hidden_states: attention_mask shape {tuple(attention_mask.shape)} != {(R, T)}")
    removed = torch.as_tensor(removed, dtype=torch.long, device=input_ids.device).reshape(-1)
    if removed.shape[0] != R:
        raise ValueError(f"removed_hidden_states: {removed.shape[0]} removed positions for {R} rows")
    if R and (int(removed.min()) < 0 or int(removed.max()) >= T):
        raise ValueError(f"removed_hidden_states: removed positions must lie in 0..{T - 1}")
    return _run(stack, input_ids, attention_mask, layer, removed)


# ---------------------------------------------------------------- can it be done for this stack?

def _probe_ids(stack: nn.Module, device) -> torch.Tensor:
    """Four valid token ids for the check (the vocabulary's ids 1..4, or fewer distinct ones)."""
    n = None
    get = getattr(stack, "get_input_embeddings", None)
    if callable(get):
        try:
            n = get().num_embeddings
        except Exception:
            n = None
    n = n or getattr(getattr(stack, "config", None), "vocab_size", None) or 2
    return (torch.arange(1, 5, device=device) % max(int(n), 1))[None, :]


def removal_support(stack: nn.Module) -> str | None:
    """None when a per-layer removal works for this stack, else a one-line reason (printed by the
    report as "influence not measured for this model: <reason>").

    Checks: the blocks can be found (stack_blocks); they take an `attention_mask` argument; the
    attention implementation takes an editable 4D mask (eager or sdpa); and, on a four-token input
    with the last token padding, at block 1: hiding the padding key changes nothing, and hiding
    token 0 changes the other tokens while token 0's own state stays as it was (so the edited mask
    does reach the attention, and only where it should)."""
    name = type(stack).__name__
    if not isinstance(stack, nn.Module):
        return f"{name} is not a torch module"
    blocks = stack_blocks(stack)
    if not blocks:
        return f"no list of transformer blocks found in {name}"
    if not _mask_parameter(blocks[0])[1]:
        return f"the blocks of {name} ({type(blocks[0]).__name__}) take no attention_mask argument"
    impl = getattr(getattr(stack, "config", None), "_attn_implementation", None)
    if impl is not None and impl not in EDITABLE_ATTENTION:
        return f"attention implementation {impl!r} takes no editable 4D mask (load the model with eager or sdpa)"
    try:
        device = next(stack.parameters()).device
    except StopIteration:
        return f"{name} has no parameters"
    was_training = stack.training
    stack.eval()
    try:
        ids = _probe_ids(stack, device)
        pad = torch.tensor([[1, 1, 1, 0]], device=device)
        with torch.no_grad():
            plain = _run(stack, ids, pad, 1, None)
            no_op = _run(stack, ids, pad, 1, torch.tensor([3], device=device))
            hidden = _run(stack, ids, pad, 1, torch.tensor([0], device=device))
    except Exception as error:  # noqa: BLE001 - any failure is the reason
        first = str(error).splitlines()[0] if str(error) else ""
        return f"a removal at block 1 of {name} fails: {type(error).__name__}: {first}"
    finally:
        stack.train(was_training)
    if not all(isinstance(t, torch.Tensor) and t.shape[:2] == (1, 4) for t in (plain, no_op, hidden)):
        return f"the blocks of {name} do not return (batch, tokens, d) hidden states"
    real = slice(0, 3)
    scale = float(plain[0, real].abs().max()) or 1.0
    if not torch.allclose(no_op[0, real], plain[0, real], atol=1e-4 * scale, rtol=1e-4):
        return f"hiding a padding key changes the states of {name}: its padding is not masked through attention_mask"
    if not torch.allclose(hidden[0, 0], plain[0, 0], atol=1e-4 * scale, rtol=1e-4):
        return f"hiding token 0 changes token 0's own state in {name}: the mask edit does not stay in its rows"
    if torch.allclose(hidden[0, 1:3], plain[0, 1:3], atol=1e-6 * scale, rtol=0):
        return (f"hiding a key at block 1 of {name} changes nothing: "
                "the block does not read the attention mask it is given")
    return None
