"""Label Studio's brush RLE, vectorised.

Produces byte-for-byte what ``label_studio_sdk.converter.brush.mask2rle`` produces (tests compare
them on many masks), about 10x faster on large masks: the SDK builds a Python string of bits chunk by
chunk; here every chunk's bits are computed at once with numpy and packed.

Format (thi.ng rle-pack, as the Label Studio frontend decodes it): the RGBA buffer of the image
(each mask pixel repeated 4 times), header = 32-bit value count, 5-bit word size - 1 (7), four 4-bit
run-size classes - 1 (3, 4, 8, 16 bits); then chunks: 1 flag bit (1 = repeated value), 2 bits size
class, count - 1 in that class's bits, then the 8-bit value (a literal chunk here always holds one
value, as the SDK writes them). The stream is padded with zeros to a byte boundary; like the SDK,
a stream already on a boundary gets a whole zero byte more.
"""

from __future__ import annotations

import numpy as np

_SIZES = (3, 4, 8, 16)
_MAX_RUN = 2**16
_HEADER_WORD = 8


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """(H, W) uint8 mask (0/255) -> Label Studio brush RLE, a list of byte values."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    if mask.dtype != np.uint8:
        raise ValueError(f"mask must be uint8 (0/255), got {mask.dtype}")
    flat = mask.ravel()
    total = flat.size * 4
    header = _bits(np.array([total], dtype=np.uint64), 32)
    header = np.concatenate([header, _bits(np.array([_HEADER_WORD - 1]), 5)]
                            + [_bits(np.array([s - 1]), 4) for s in _SIZES])
    if flat.size == 0:
        body = np.zeros(0, dtype=np.uint8)
    else:
        ends = np.flatnonzero(flat[1:] != flat[:-1])
        ends = np.append(ends, flat.size - 1)
        lengths = np.diff(np.append(-1, ends)).astype(np.int64) * 4  # RGBA: 4 equal bytes per pixel
        body = _chunk_bits(lengths, flat[ends].astype(np.int64))
    stream = np.concatenate([header, body])
    stream = np.concatenate([stream, np.zeros(8 - stream.size % 8, dtype=np.uint8)])
    return np.packbits(stream).tolist()


def _chunk_bits(lengths: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Bits of every chunk, in order, for runs of ``lengths`` (> 0) of ``values``."""
    # Runs longer than 2**16 become several full chunks plus the rest, as the SDK splits them.
    pieces = np.maximum(1, -(-lengths // _MAX_RUN))
    run_index = np.repeat(np.arange(lengths.size), pieces)
    first = np.cumsum(pieces) - pieces
    k = np.arange(run_index.size) - np.repeat(first, pieces)  # piece number within its run
    last = k == pieces[run_index] - 1
    counts = np.where(last, lengths[run_index] - (pieces[run_index] - 1) * _MAX_RUN, _MAX_RUN)
    values = values[run_index]

    # The size class follows the whole run's length: a run over 256 writes every piece, even a
    # short remainder, in the 16-bit class (as the SDK does).
    run_length = lengths[run_index]
    single = run_length == 1
    size_class = np.select([single, run_length <= 8, run_length <= 16, run_length <= 256], [0, 0, 1, 2], 3)
    count_bits = np.array(_SIZES)[size_class]
    flag = (~single).astype(np.int64)
    width = 1 + 2 + count_bits + 8
    code = (flag << (width - 1)) | (size_class << (width - 3)) | ((counts - 1) << 8) | values
    # Left-align every code in 27 bits (the widest chunk), then keep each chunk's own width.
    widest = 27
    aligned = code << (widest - width)
    shifts = np.arange(widest - 1, -1, -1, dtype=np.int64)
    out = []
    for start in range(0, aligned.size, 1 << 20):  # bounded memory on noisy masks
        block = aligned[start : start + (1 << 20)]
        bits = ((block[:, None] >> shifts) & 1).astype(np.uint8)
        keep = np.arange(widest)[None, :] < width[start : start + (1 << 20), None]
        out.append(bits[keep])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.uint8)


def _bits(values: np.ndarray, width: int) -> np.ndarray:
    values = values.astype(np.uint64)
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
    return ((values[:, None] >> shifts) & np.uint64(1)).astype(np.uint8).ravel()


def rle_to_mask(rle: list[int], height: int, width: int) -> np.ndarray:
    """Decode a brush RLE back to an (H, W) uint8 mask (the alpha channel), with the SDK's decoder."""
    from label_studio_sdk.converter.brush import decode_rle

    return np.reshape(decode_rle(rle), (height, width, 4))[:, :, 3]
