"""The process that runs ITK's contour interpolation (``python -m napari_dropsembles.core.slices.contour_worker``).

ITK's Python package and SimpleITK (which reads MetaImage here) each carry their own ITK; loaded into one
process they corrupt each other's heap, and the process crashes when it exits (measured: a segfault or
``malloc_consolidate()`` abort after the work is done, with exit status 139 or 134). So ITK never loads
into the caller: this worker reads requests on stdin and answers on stdout, one ``.npy`` array each way
(:func:`serve`). It imports only numpy and ITK.
"""

from __future__ import annotations

import io
import struct
import sys

import numpy as np


def fill(fine: np.ndarray, axis: int) -> np.ndarray:
    """0/1 uint8: the slices of ``fine`` along ``axis`` filled in between by ITK."""
    import itk  # the ITK Python package: loaded in this worker only

    image = itk.image_from_array(np.ascontiguousarray(fine, dtype=np.uint8))
    return (itk.array_from_image(itk.morphological_contour_interpolator(image, axis=2 - axis)) > 0).astype(np.uint8)


def send(stream, array: np.ndarray) -> None:
    """One array on a pipe: its ``.npy`` bytes after their length (8 bytes, little-endian)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    stream.write(struct.pack("<Q", buffer.tell()) + buffer.getvalue())
    stream.flush()


def receive(stream) -> np.ndarray:
    """The next array :func:`send` wrote; EOFError when the pipe closed."""
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("the pipe closed")
    (size,) = struct.unpack("<Q", head)
    body = stream.read(size)
    if len(body) < size:
        raise EOFError("the pipe closed mid-array")
    return np.load(io.BytesIO(body), allow_pickle=False)


def serve(stdin, stdout) -> None:
    """Answer requests until stdin closes: each request is the axis (a 1-element int64 array) then the volume."""
    while True:
        try:
            axis = int(receive(stdin)[0])
            fine = receive(stdin)
        except EOFError:  # the caller closed the pipe
            return
        send(stdout, fill(fine, axis))


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
