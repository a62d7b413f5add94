"""A small NumPy encoder for lossless JPEG (ITU T.81 process 14), so synthetic GE and Fuji files can use the
transfer syntaxes those vendors really send: JPEG Lossless SV1 (1.2.840.10008.1.2.4.70) and JPEG Lossless
with another predictor (1.2.840.10008.1.2.4.57). pydicom has no encoder for either.

One grey component, one scan, no restart markers, a Huffman table optimised for the image.
"""

from __future__ import annotations

import heapq
import struct

import numpy as np

_CATEGORY = np.zeros(1 << 16 | 1, dtype=np.int64)
for _bits in range(1, 17):
    _CATEGORY[1 << (_bits - 1) : 1 << _bits] = _bits
_CATEGORY[1 << 16] = 17  # unreachable: |diff| <= 32768
_EXTRA_BITS = np.array([*range(16), 0, 0], dtype=np.int64)


def _residuals(img: np.ndarray, precision: int, predictor: int) -> np.ndarray:
    """Px - prediction for every sample (T.81 H.1.2.1); first row uses Ra, first column Rb."""
    x = img.astype(np.int32)
    pred = np.empty_like(x)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:] = x[0, :-1]
    pred[1:, 0] = x[:-1, 0]
    ra, rb, rc = x[1:, :-1], x[:-1, 1:], x[:-1, :-1]
    formulas = {
        1: lambda: ra,
        2: lambda: rb,
        3: lambda: rc,
        4: lambda: ra + rb - rc,
        5: lambda: ra + ((rb - rc) >> 1),
        6: lambda: rb + ((ra - rc) >> 1),
        7: lambda: (ra + rb) >> 1,
    }
    pred[1:, 1:] = formulas[predictor]()
    diff = (x - pred) & 0xFFFF  # modulo 2**16, then back to the signed range -32767..32768
    return np.where(diff >= 0x8000, diff - 0x10000, diff).ravel().astype(np.int64)


def _code_lengths(freq: np.ndarray) -> np.ndarray:
    """Huffman code lengths (<= 16 bits, no all-ones code) for the 17 difference categories (T.81 K.2)."""
    symbols = [int(s) for s in np.flatnonzero(freq)]
    weights = {s: int(freq[s]) for s in symbols}
    weights[17] = 0  # reserved dummy symbol: guarantees no code is all ones
    heap = [(w, i, [s]) for i, (s, w) in enumerate(weights.items())]
    heapq.heapify(heap)
    lengths = dict.fromkeys(weights, 0)
    counter = len(heap)
    while len(heap) > 1:
        w1, _, s1 = heapq.heappop(heap)
        w2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (w1 + w2, counter, s1 + s2))
        counter += 1
    bits = np.zeros(33, dtype=np.int64)
    for length in lengths.values():
        bits[length] += 1
    for i in range(32, 16, -1):  # T.81 Figure K.3: move overlong codes up the tree
        while bits[i] > 0:
            j = i - 2
            while bits[j] == 0:
                j -= 1
            bits[i] -= 2
            bits[i - 1] += 1
            bits[j + 1] += 2
            bits[j] -= 1
    i = 16
    while bits[i] == 0:
        i -= 1
    bits[i] -= 1  # drop the dummy symbol (it has the longest code)
    ordered = sorted(symbols, key=lambda s: (lengths[s], -weights[s]))
    out = np.zeros(17, dtype=np.int64)
    k = 0
    for length in range(1, 17):
        for _ in range(bits[length]):
            out[ordered[k]] = length
            k += 1
    return out


def _canonical_codes(lengths: np.ndarray) -> tuple[np.ndarray, list[int], list[int]]:
    """Codes from lengths, plus the BITS and HUFFVAL lists of the DHT segment."""
    order = sorted((int(n), s) for s, n in enumerate(lengths) if n > 0)
    codes = np.zeros(17, dtype=np.int64)
    code, prev = 0, order[0][0]
    counts = [0] * 16
    for n, s in order:
        code <<= n - prev
        prev = n
        codes[s] = code
        code += 1
        counts[n - 1] += 1
    return codes, counts, [s for _, s in order]


def _pack_bits(values: np.ndarray, nbits: np.ndarray) -> bytes:
    """Concatenate variable-length codes (<= 32 bits) MSB-first, pad with ones, stuff a zero after each 0xFF.

    A code starting at bit s lands in 32-bit words s>>5 and (s>>5)+1. Codes never share bits, so summing
    the word contributions with bincount equals OR-ing them, and needs no per-bit loop.
    """
    ends = np.cumsum(nbits)
    total = int(ends[-1])
    starts = ends - nbits
    n_words = (total >> 5) + 2
    word = starts >> 5
    aligned = values.astype(np.uint64) << (64 - (starts & 31) - nbits).astype(np.uint64)
    words = np.bincount(word, weights=(aligned >> np.uint64(32)).astype(np.float64), minlength=n_words)
    words += np.bincount(word + 1, weights=(aligned & np.uint64(0xFFFFFFFF)).astype(np.float64), minlength=n_words)
    n_bytes = -(-total // 8)
    data = np.frombuffer(words.astype(">u4").tobytes(), dtype=np.uint8)[:n_bytes].copy()
    pad = n_bytes * 8 - total
    if pad:
        data[-1] |= (1 << pad) - 1
    ff = np.flatnonzero(data == 0xFF)
    if ff.size:
        data = np.insert(data, ff + 1, 0)
    return data.tobytes()


def encode_lossless_jpeg(img: np.ndarray, precision: int, predictor: int = 1) -> bytes:
    """Encode a 2-D unsigned image as a lossless JPEG codestream (SOF3).

    `precision` is the sample precision P (2..16, usually BitsStored); `predictor` the selection value 1..7
    (1 = SV1, the DICOM default transfer syntax 1.2.840.10008.1.2.4.70).
    """
    if img.ndim != 2:
        raise ValueError(f"lossless JPEG needs a 2-D image, got shape {img.shape}")
    if not 2 <= precision <= 16 or not 1 <= predictor <= 7:
        raise ValueError(f"precision must be 2..16 and predictor 1..7, got {precision} and {predictor}")
    if img.size and int(img.max()) >= 1 << precision:
        raise ValueError(f"pixel value {int(img.max())} does not fit in {precision} bits")
    rows, cols = img.shape
    diff = _residuals(img, precision, predictor)
    ssss = _CATEGORY[np.abs(diff)]  # bit length of |diff| (T.81 Table H.2)
    lengths = _code_lengths(np.bincount(ssss, minlength=17))
    codes, counts, huffval = _canonical_codes(lengths)
    extra_n = _EXTRA_BITS[ssss]  # category 16 (difference 32768) carries no extra bits
    extra = (diff - (diff < 0)) & ((1 << extra_n) - 1)  # negative: low bits of diff - 1 (ones' complement)
    values = (codes[ssss] << extra_n) | extra
    nbits = lengths[ssss] + extra_n
    scan = _pack_bits(values, nbits)
    sof = struct.pack(">HHBHHBBBB", 0xFFC3, 11, precision, rows, cols, 1, 1, 0x11, 0)
    dht = struct.pack(">HHB", 0xFFC4, 3 + 16 + len(huffval), 0x00) + bytes(counts) + bytes(huffval)
    sos = struct.pack(">HHBBBBBB", 0xFFDA, 8, 1, 1, 0x00, predictor, 0, 0)
    return b"\xff\xd8" + sof + dht + sos + scan + b"\xff\xd9"
