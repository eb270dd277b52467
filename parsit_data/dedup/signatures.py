"""Per-row signatures for near-duplicate and contamination checks, computed where the build already has
the decoded image and the validated text.

- image: a 256-bit DCT perceptual hash (:func:`phash`: 64x64 grey, 2-D DCT, the 16x16 lowest frequencies
  against their median) and an exact hash of the stored bytes (:func:`exact_hash`). 256 bits rather than
  pHash's usual 64: documents and charts drawn from one template share their low frequencies, and the 64-bit
  hash cannot tell them apart (benchmarks/dedup.py measures both);
- text: a MinHash (rensa, Rust) over 5-byte shingles of the normalised conversation, and, with eval sets, one
  per user turn (an eval question is compared with user turns). Character (byte) shingles, not word
  shingles: most VLM turns are a few words long, and one edited word removes up to three of a short text's
  few word 3-grams (Jaccard falls under any usable threshold) but only ~9 of its 5-grams
  (benchmarks/dedup.py measures both).

A partition's signatures are stored next to its part file (``_parts/sig-NNNNN.arrow``, see
:func:`write_signatures`): every row the partition kept before the global pass, in row order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pyarrow as pa
from PIL import Image
from rensa import RMinHash

from parsit_data.format import table_file_bytes, table_from_file_bytes

#: MinHash permutations (and rensa's seed: fixed, part of the format of the signature files).
NUM_PERM = 128
MINHASH_SEED = 1
#: Character shingle length.
SHINGLE = 5
#: pHash: side of the grey thumbnail and of the low-frequency block kept (16x16 = 256 bits).
PHASH_SIDE = 64
PHASH_LOW = 16
PHASH_BYTES = PHASH_LOW * PHASH_LOW // 8
#: Each image is hashed whole and as centred crops of these scales: a copy cropped by a few percent is its
#: original zoomed, and its whole view meets one of the original's crops. Two images are compared by the
#: smallest distance over the views (benchmarks/dedup.py: a 3% crop goes from 45-90 bits to 8-32).
SCALES = (1.0, 0.97, 0.94, 0.91)
VIEWS = len(SCALES)
_BASE = 256

_PLACEHOLDER = "<image>"


@lru_cache(maxsize=4)
def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix: ``D @ x`` is the DCT of ``x``."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d.astype(np.float64)


def phash(img: Image.Image, side: int = PHASH_SIDE, low: int = PHASH_LOW, scales=SCALES) -> bytes:
    """Perceptual hashes of a decoded image, one per view (``scales``): ``low*low`` bits each, packed."""
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGBA").convert("RGB") if "A" in img.mode or img.mode == "P" else img.convert("RGB")
    # Grey first (one channel to filter, not three), then one box reduction; the views are cut from it.
    base = img.convert("L").resize((_BASE, _BASE), Image.Resampling.BOX)
    x = np.empty((len(scales), side, side), dtype=np.float64)
    for k, s in enumerate(scales):
        m = round(_BASE * (1 - s) / 2)
        x[k] = np.asarray((base.crop((m, m, _BASE - m, _BASE - m)) if m else base).resize(
            (side, side), Image.Resampling.BOX), dtype=np.float64)
    d = _dct_matrix(side)
    block = (d @ x @ d.T)[:, :low, :low].reshape(len(scales), -1)
    med = np.median(block[:, 1:], axis=1, keepdims=True)  # the DC term (mean brightness) is not in the median
    return np.packbits(block > med, axis=1).tobytes()


def exact_hash(data: bytes) -> int:
    """64-bit hash of an image's stored bytes (signed, to fit Arrow's int64)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def normalize(text: str) -> str:
    """What a text signature sees: no image placeholders, lower case, single spaces."""
    return " ".join(text.replace(_PLACEHOLDER, " ").lower().split())


def shingles(text: str, k: int = SHINGLE) -> list[str]:
    """Character k-grams of normalised text (the whole text when it is shorter than k)."""
    if len(text) <= k:
        return [text] if text else []
    return [text[i:i + k] for i in range(len(text) - k + 1)]


def word_shingles(text: str, k: int = 3) -> list[str]:
    """Word k-grams (the alternative measured in benchmarks/dedup.py)."""
    w = text.split()
    if len(w) <= k:
        return [" ".join(w)] if w else []
    return [" ".join(w[i:i + k]) for i in range(len(w) - k + 1)]


def minhash(tokens: list[str]) -> np.ndarray:
    """MinHash of a token set: NUM_PERM uint32 (all 0xFFFFFFFF for an empty set)."""
    if not tokens:
        return np.full(NUM_PERM, 0xFFFFFFFF, dtype=np.uint32)
    m = RMinHash(num_perm=NUM_PERM, seed=MINHASH_SEED)
    m.update(tokens)
    return np.asarray(m.digest(), dtype=np.uint32)


_M1, _M2, _P = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x100000001B3)


def _mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place (``h``: uint64)."""
    with np.errstate(over="ignore"):
        h ^= h >> np.uint64(30)
        h *= _M1
        h ^= h >> np.uint64(27)
        h *= _M2
        h ^= h >> np.uint64(31)
    return h


def text_signatures(texts: list[str], k: int = SHINGLE) -> np.ndarray:
    """MinHash of the k-byte shingles of each normalised text, all texts in one call: (len(texts), NUM_PERM)
    uint32; an empty text gets all 0xFFFFFFFF (it never matches). The shingles are hashed in numpy (a rolling
    polynomial hash, then mixed) and rensa computes the digests from the flat hashes: ~10x faster than one
    Python string per shingle. For ASCII text, bytes are characters."""
    enc = [normalize(t).encode("utf-8", "replace") for t in texts]
    n = len(enc)
    if n == 0:
        return np.zeros((0, NUM_PERM), np.uint32)
    lens = np.fromiter(map(len, enc), np.int64, count=n)
    data = np.frombuffer(b"".join(enc), np.uint8)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    total = len(data)
    size = max(total - k + 1, 0)
    win = data[:size].astype(np.uint64)  # = 0 * P + data[0:size]
    with np.errstate(over="ignore"):
        for j in range(1, k):  # in place: one array, not three temporaries per byte of shingle
            win *= _P
            win += data[j:j + size]
    win = _mix64(win)
    counts = np.where(lens >= k, lens - k + 1, (lens > 0).astype(np.int64))
    pieces = []
    for r in range(n):
        if lens[r] >= k:
            pieces.append(win[starts[r]:starts[r] + counts[r]])
        elif lens[r] > 0:  # shorter than one shingle: the whole text is its only token
            pieces.append(np.array([int.from_bytes(hashlib.blake2b(enc[r], digest_size=8).digest(), "little")],
                                   np.uint64))
    flat = np.concatenate(pieces) if pieces else np.zeros(0, np.uint64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.uint64)
    m = RMinHash.digest_matrix_from_flat_token_hashes(flat, offsets, NUM_PERM, MINHASH_SEED)
    out = np.asarray(m.to_rows(), dtype=np.uint32).reshape(n, NUM_PERM)
    out[lens == 0] = 0xFFFFFFFF
    return out


def text_signature(text: str) -> np.ndarray:
    return text_signatures([text])[0]


@dataclass
class SignatureRows:
    """A partition's signatures, row by row (one call of :meth:`add` per kept row). ``user_turns``: also one
    MinHash per user turn (only eval sets need them: without one the build does not pay for them)."""

    user_turns: bool = True

    sample_ids: list[str] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # the record's line or index in its source
    phashes: list[list[bytes]] = field(default_factory=list)
    exact: list[list[int]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)  # signed in one batch by to_table
    user: list[list[str]] = field(default_factory=list)
    user_chars: list[list[int]] = field(default_factory=list)  # normalised length of each user turn

    def add(self, sample_id: str, position: int, turns, images) -> None:
        """``turns``: :class:`~parsit_data.records.Turn`; ``images``: :class:`~parsit_data.images.LoadedImage`."""
        self.sample_ids.append(sample_id)
        self.positions.append(position)
        self.phashes.append([im.phash or b"" for im in images])
        self.exact.append([exact_hash(im.data) for im in images])
        self.text.append("\n".join(t.content for t in turns))
        user = [t.content for t in turns if t.role == "user"] if self.user_turns else []
        self.user.append(user)
        self.user_chars.append([len(normalize(u)) for u in user])

    def to_table(self) -> pa.Table:
        n = len(self.sample_ids)
        text = text_signatures(self.text)
        user = text_signatures([u for row in self.user for u in row])
        fixed = pa.list_(pa.uint32(), NUM_PERM)
        return pa.table({
            "sample_id": pa.array(self.sample_ids, pa.string()),
            "position": pa.array(self.positions, pa.int64()),
            "phash": pa.array(self.phashes, pa.list_(pa.binary())),
            "exact": pa.array(self.exact, pa.list_(pa.int64())),
            "text": pa.FixedSizeListArray.from_arrays(pa.array(text.ravel(), pa.uint32()), NUM_PERM).cast(fixed),
            "user": pa.ListArray.from_arrays(
                pa.array(np.concatenate([[0], np.cumsum([len(r) for r in self.user], dtype=np.int64)]).astype(np.int32)),
                pa.FixedSizeListArray.from_arrays(pa.array(user.ravel(), pa.uint32()), NUM_PERM)),
            "user_chars": pa.array(self.user_chars, pa.list_(pa.int32())),
        })


def sig_path(out, index: int):
    """A partition's signatures: every row it kept before the global pass (never rewritten by it)."""
    from parsit_data.format import PARTS_DIR

    return out / PARTS_DIR / f"sig-{index:05d}.arrow"


#: the partition signature files' bytes: written and read by the format package (it alone reads Arrow IPC)
table_bytes = table_file_bytes
table_from_bytes = table_from_file_bytes
