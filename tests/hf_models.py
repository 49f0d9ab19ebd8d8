"""Tiny random Hugging Face models for the tests, built from configs with tokenizers trained (by the
`tokenizers` library) on the given sentences, and saved with save_pretrained() to a folder: a BERT
(mlm), a GPT-2 (lm) and a Marian translation model (mt). Nothing comes from the hub."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

WIDTH, LAYERS, HEADS, POSITIONS = 32, 2, 2, 96


def _fast(tok, **special):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=POSITIONS, **special)


def bert_tokenizer(sentences: Sequence[str], vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(sentences, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls),
                                                                                                ("[SEP]", sep)])
    return _fast(tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                 mask_token="[MASK]")


def gpt2_tokenizer(sentences: Sequence[str], vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.train_from_iterator(sentences, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return _fast(tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>")


def marian_tokenizer(sentences: Sequence[str], vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = ["</s>", "<unk>", "<pad>"]
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(sentences, trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                               unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
    return _fast(tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>")


def build(kind: str, folder: Path, sentences: Sequence[str], seed: int = 0):
    """Save a tiny random `kind` model (bert | gpt2 | neox | marian) and its tokenizer to `folder`; returns
    (model, tokenizer)."""
    import torch
    import transformers as t

    tokenizer = {"bert": bert_tokenizer, "gpt2": gpt2_tokenizer, "neox": gpt2_tokenizer,
                 "marian": marian_tokenizer}[kind](sentences)
    vocab = len(tokenizer)
    torch.manual_seed(seed)
    if kind == "bert":
        config = t.BertConfig(vocab_size=vocab, hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                              intermediate_size=2 * WIDTH, max_position_embeddings=POSITIONS,
                              pad_token_id=tokenizer.pad_token_id)
        model = t.BertForMaskedLM(config)
    elif kind == "gpt2":
        config = t.GPT2Config(vocab_size=vocab, n_positions=POSITIONS, n_embd=WIDTH, n_layer=LAYERS, n_head=HEADS,
                              bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
        model = t.GPT2LMHeadModel(config)
    elif kind == "neox":  # Pythia's architecture: rotary positions, parallel residual, untied embed_out
        config = t.GPTNeoXConfig(vocab_size=vocab, hidden_size=WIDTH, num_hidden_layers=LAYERS,
                                 num_attention_heads=HEADS, intermediate_size=2 * WIDTH,
                                 max_position_embeddings=POSITIONS, rotary_pct=0.25, use_parallel_residual=True,
                                 bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                                 tie_word_embeddings=False)
        model = t.GPTNeoXForCausalLM(config)
    else:
        config = t.MarianConfig(vocab_size=vocab, d_model=WIDTH, encoder_layers=LAYERS, decoder_layers=1,
                                encoder_attention_heads=HEADS, decoder_attention_heads=HEADS,
                                encoder_ffn_dim=2 * WIDTH, decoder_ffn_dim=2 * WIDTH,
                                max_position_embeddings=POSITIONS, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
        model = t.MarianMTModel(config)
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer


def marian_spm(folder: Path, sentences: Sequence[str], vocab_size: int = 400, seed: int = 0):
    """A tiny Marian model with transformers' own MarianTokenizer (slow: sentencepiece source.spm /
    target.spm and a vocab.json, as the opus-mt models ship), saved to `folder`; returns (model, tokenizer)."""
    import io
    import json

    import sentencepiece as spm
    import torch
    import transformers as t

    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=proto, vocab_size=vocab_size,
                                   model_type="unigram", minloglevel=2)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("source.spm", "target.spm"):
        (folder / name).write_bytes(proto.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    vocab = {"</s>": 0, "<unk>": 1, "<pad>": 2}
    for i in range(sp.get_piece_size()):
        vocab.setdefault(sp.id_to_piece(i), len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = t.MarianTokenizer(str(folder / "source.spm"), str(folder / "target.spm"), str(folder / "vocab.json"),
                                  model_max_length=POSITIONS)
    torch.manual_seed(seed)
    config = t.MarianConfig(vocab_size=len(vocab), d_model=WIDTH, encoder_layers=LAYERS, decoder_layers=1,
                            encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=2 * WIDTH,
                            decoder_ffn_dim=2 * WIDTH, max_position_embeddings=POSITIONS, pad_token_id=2,
                            eos_token_id=0, decoder_start_token_id=2)
    model = t.MarianMTModel(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer


ROLES = {"bert": "mlm", "gpt2": "lm", "marian": "mt", "neox": "lm"}


def build_all(root: Path, sentences: Sequence[str]) -> dict[str, Path]:
    """The tiny models (every kind of ROLES) under `root`/<kind>; returns kind -> folder."""
    out = {}
    for i, kind in enumerate(ROLES):
        build(kind, root / kind, sentences, seed=i)
        out[kind] = root / kind
    return out
