"""Raw text → one token stream → ``max_length`` blocks: pre-training that keeps every token.

``tokenize_corpus`` turns the documents of ``trainer.data.corpus`` into one stream, eos after each
document, in three passes that each hold only a batch in memory:
1. ``datasets.Dataset.from_generator`` writes the documents to Arrow files on disk;
2. ``Dataset.map(batched=True, num_proc=N)`` tokenises them in N worker processes, on disk too;
3. one sequential pass writes the stream as ``tokens.bin`` (uint32) and ``doc_ends.npy`` (where each
   document ends), nanoGPT's ``train.bin`` with document boundaries.
The result is cached under ``$ASSISTANT_CACHE/corpus/<key>`` (default ``~/.cache/myassistant``), the key
made of the files (path, size, modification time), how they are read and the tokenizer, so a second run
(or another ``max_length``) opens two memory maps and starts at once.

``TextBlocks`` cuts the stream into ``ceil(tokens / max_length)`` blocks: block i is tokens
``[i*L, (i+1)*L)``, so every token of the corpus is in exactly one block, and an epoch over the blocks
trains on all of them. Positions restart at each document start (and at the block start), which is how
packing keeps attention within a document (``trainer.data.dataset.pack``); the first token of each
document, and of each block, is not a target (nothing before it in its segment predicts it).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .corpus import TextSpec, check_file, find_files, fingerprint, iter_pieces
from .dataset import IGNORE_INDEX
from .formats import DataError

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the stream's layout or the reading rules change
TOKENS_NAME, ENDS_NAME, META_NAME = "tokens.bin", "doc_ends.npy", "meta.json"


def cache_root() -> Path:
    """Where token streams are cached: $ASSISTANT_CACHE/corpus, else ~/.cache/myassistant/corpus."""
    return Path(os.environ.get("ASSISTANT_CACHE") or Path.home() / ".cache" / "myassistant").expanduser() / "corpus"


@dataclass
class TokenStream:
    """A tokenised corpus on disk: ``tokens`` (memory-mapped) and the end offset of every document."""

    folder: Path
    tokens: np.ndarray  # uint32, documents joined, each followed by eos
    doc_ends: np.ndarray  # int64, cumulative: document d is tokens[doc_ends[d-1]:doc_ends[d]]
    meta: dict

    @property
    def documents(self) -> int:
        return len(self.doc_ends)

    def blocks(self, max_length: int) -> int:
        return math.ceil(len(self.tokens) / max_length)


def _key(files: list[Path], spec: TextSpec, tokenizer) -> str:
    vocab = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()
    ident = {"version": CACHE_VERSION, "files": fingerprint(files), "spec": asdict(spec), "tokenizer": vocab,
             "eos": tokenizer.eos_token_id}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def open_stream(folder: Path) -> TokenStream:
    meta = json.loads((folder / META_NAME).read_text(encoding="utf-8"))
    tokens = np.memmap(folder / TOKENS_NAME, dtype=np.uint32, mode="r") if meta["tokens"] else np.zeros(0, np.uint32)
    return TokenStream(folder, tokens, np.load(folder / ENDS_NAME), meta)


def _tokenize(batch: dict, tokenizer, eos: int) -> dict:
    ids = tokenizer(batch["text"], add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return {"input_ids": [x + [eos] if last else x for x, last in zip(ids, batch["last"])]}


def tokenize_corpus(path: str | Path, tokenizer, spec: TextSpec = TextSpec(), *, num_proc: int = 0,
                    cache_dir: str | Path | None = None) -> TokenStream:
    """The token stream of every document under ``path`` (file, folder or glob), from the cache when it has it.

    ``num_proc``: tokenising processes (0 = one per CPU core). Raises ``DataError`` for bad input
    (binary, wrong encoding, no file, no document) before anything is cached.
    """
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no eos token to put between documents")
    files = find_files(path)
    for f in files:
        check_file(f, spec)
    root = Path(cache_dir) if cache_dir else cache_root()
    folder = root / _key(files, spec, tokenizer)
    if (folder / META_NAME).exists():
        stream = open_stream(folder)
        log.info("%s: %s tokens of %s documents from the cache (%s)", path, f"{len(stream.tokens):,}",
                 f"{stream.documents:,}", folder)
        return stream
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root))
    try:
        started = time.perf_counter()
        stream = _build(files, spec, tokenizer, num_proc or os.cpu_count() or 1, work, str(path))
        log.info("%s: tokenised %s documents into %s tokens in %.1f s (%.0f tokens/s), cached in %s", path,
                 f"{stream.documents:,}", f"{len(stream.tokens):,}", time.perf_counter() - started,
                 len(stream.tokens) / max(time.perf_counter() - started, 1e-9), folder)
        shutil.rmtree(work / "hf", ignore_errors=True)  # the Arrow files: the stream is all a run reads
        try:
            work.rename(folder)
        except OSError:  # another process cached the same corpus meanwhile: use theirs
            shutil.rmtree(work, ignore_errors=True)
        return open_stream(folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


@contextmanager
def _ctrl_c_in_this_process_only() -> Iterator[None]:
    """Ctrl-C goes to every process of the terminal's group: each of datasets' tokenising workers printed its
    KeyboardInterrupt traceback. The workers, forked inside, inherit this handler and let it pass; this process
    stops (and datasets ends the pool)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread sets handlers
        yield
        return
    parent = os.getpid()

    def interrupt(signum: int, frame: object) -> None:
        if os.getpid() == parent:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _build(files: list[Path], spec: TextSpec, tokenizer, num_proc: int, work: Path, source: str) -> TokenStream:
    import datasets
    import pyarrow.compute as pc

    if next(iter_pieces(files, spec), None) is None:  # (datasets cannot make an empty dataset from a generator)
        raise DataError(f"{source}: no text in {len(files)} file(s): the document set is empty")
    hf = work / "hf"
    try:
        docs = datasets.Dataset.from_generator(iter_pieces, gen_kwargs={"files": files, "spec": spec},
                                               cache_dir=str(hf), features=datasets.Features(
                                                   {"text": datasets.Value("string"), "last": datasets.Value("bool")}))
    except datasets.exceptions.DatasetGenerationError as err:  # our DataError, raised inside the generator
        cause = err.__cause__ or err.__context__
        raise (cause if isinstance(cause, DataError) else err) from None
    num_proc = max(1, min(num_proc, docs.num_rows // 4096))  # starting a worker costs more than small corpora
    with _ctrl_c_in_this_process_only():
        ids = docs.map(_tokenize, batched=True, batch_size=256, num_proc=num_proc if num_proc > 1 else None,
                       fn_kwargs={"tokenizer": tokenizer, "eos": tokenizer.eos_token_id}, remove_columns=["text"],
                       features=datasets.Features({"last": datasets.Value("bool"),
                                                   "input_ids": datasets.Sequence(datasets.Value("uint32"))}),
                       new_fingerprint=work.name + "-ids", desc="tokenising")
    ends, offset = [], 0
    with open(work / TOKENS_NAME, "wb") as out:
        for table in ids.with_format("arrow").iter(batch_size=1024):  # rows of up to PIECE_CHARS: bounded memory
            col = table.column("input_ids").combine_chunks()
            out.write(col.flatten().to_numpy(zero_copy_only=False).astype(np.uint32, copy=False).tobytes())
            cum = offset + np.cumsum(pc.list_value_length(col).to_numpy(zero_copy_only=False), dtype=np.int64)
            ends.append(cum[table.column("last").to_numpy(zero_copy_only=False)])
            offset = int(cum[-1]) if len(cum) else offset
    del ids, docs
    np.save(work / ENDS_NAME, np.concatenate(ends) if ends else np.zeros(0, np.int64))
    meta = {"source": source, "files": len(files), "documents": int(sum(map(len, ends))), "tokens": offset,
            "spec": asdict(spec), "tokenizer": getattr(tokenizer, "name_or_path", "")}
    (work / META_NAME).write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return open_stream(work)


class TextBlocks(torch.utils.data.Dataset):
    """The ``max_length`` blocks of a token stream (``input_ids``, ``labels``, ``position_ids`` lists)."""

    def __init__(self, stream: TokenStream, max_length: int):
        self.stream, self.max_length = stream, max_length
        self.starts = np.concatenate([[0], stream.doc_ends[:-1]]) if stream.documents else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return self.stream.blocks(self.max_length)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        lo, hi = i * self.max_length, min((i + 1) * self.max_length, len(self.stream.tokens))
        ids = self.stream.tokens[lo:hi].astype(np.int64)
        first = np.searchsorted(self.starts, lo, side="right")  # document starts inside the block
        last = np.searchsorted(self.starts, hi, side="left")
        segment_starts = np.unique(np.concatenate([[0], self.starts[first:last] - lo]))
        positions = np.arange(hi - lo) - np.repeat(segment_starts, np.diff(np.append(segment_starts, hi - lo)))
        labels = ids.copy()
        labels[segment_starts] = IGNORE_INDEX
        return {"input_ids": ids.tolist(), "labels": labels.tolist(), "position_ids": positions.tolist()}
